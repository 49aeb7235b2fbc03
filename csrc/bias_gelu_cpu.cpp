// y = gelu(x + b) (exact, erf-based) for x [N, T, C] and a bias per row group b [N, C]: the bias
// add fused into the activation (kernels/bias_gelu_cpu.py), so the GEMM before it writes no bias
// broadcast and the backward sums the bias gradient as it writes dx.
//
// Phi(z) = erfc(-z / sqrt 2) / 2 with erfc(a) = t P(t) exp(-a^2), t = 1 / (1 + p a) for a >= 0
// (Abramowitz & Stegun 7.1.26, absolute error < 1.5e-7): one exponential, which the backward
// reuses for phi(z) = exp(-z^2 / 2) / sqrt(2 pi).
#include <algorithm>
#include <cstdint>

#include "simd_cpu.h"

namespace {
using namespace fedbrb;

// Phi(z) of N vectors, stage by stage (independent chains side by side, as vexp_n); with `pdf`,
// also phi(z).
template <int N>
inline void normal_cdf_n(const vf *z, vf *cdf, vf *pdf) {
    vf ax[N], t[N], poly[N], gauss[N];
    for (int u = 0; u < N; u++) {
        const vf x = z[u] * -0.707106781186547524f;
        ax[u] = vmax(x, -x);
        t[u] = vrcp(1.0f + 0.3275911f * ax[u]);
        gauss[u] = -ax[u] * ax[u];
    }
    vexp_n<N>(gauss);  // exp(-z^2 / 2)
    for (int u = 0; u < N; u++)
        poly[u] = t[u] * (0.254829592f + t[u] * (-0.284496736f + t[u] * (1.421413741f + t[u] * (-1.453152027f
                  + t[u] * 1.061405429f))));
    for (int u = 0; u < N; u++) {
        if (pdf) pdf[u] = gauss[u] * 0.398942280401432678f;
        const vf erfc_ax = poly[u] * gauss[u];
        cdf[u] = 0.5f * (z[u] <= 0.0f ? erfc_ax : 2.0f - erfc_ax);
    }
}

// Rows computed side by side: with the 16 registers of AVX or SSE, more than 2 spill (measured
// on AVX2: 2 rows 10-20% faster than 4).
constexpr int ROWS = REGISTERS >= 32 ? 4 : 2;

inline vf load_n(const float *p, int64_t n) { return n == W ? load(p) : load_tail(p, n); }
inline void store_n(float *p, vf v, int64_t n) {
    if (n == W) store(p, v);
    else store_tail(p, v, n);
}
}  // namespace

extern "C" {
void fedbrb_bias_gelu_forward(const float *x, const float *b, float *y, int64_t N, int64_t T, int64_t C,
                              int64_t threads) {
    parallel_row_blocks<ROWS>(N * T, threads, [&](int64_t row, auto count) {
        constexpr int R = decltype(count)::value;
        for (int64_t c = 0; c < C; c += W) {
            const int64_t n = std::min<int64_t>(W, C - c);
            vf z[R], cdf[R];
            for (int u = 0; u < R; u++) z[u] = load_n(x + (row + u) * C + c, n) + load_n(b + (row + u) / T * C + c, n);
            normal_cdf_n<R>(z, cdf, nullptr);
            for (int u = 0; u < R; u++) store_n(y + (row + u) * C + c, z[u] * cdf[u], n);
        }
    });
}

// dx = dy * gelu'(x + b); db_parts[n, j] = the sum of dx over rows [j * rows_per_part, ...) of
// group n (the caller sums the parts: no two threads write one bias gradient).
void fedbrb_bias_gelu_backward(const float *x, const float *b, const float *dy, float *dx, float *db_parts, int64_t N,
                               int64_t T, int64_t C, int64_t rows_per_part, int64_t threads) {
    const int64_t parts = (T + rows_per_part - 1) / rows_per_part;
#pragma omp parallel for num_threads(int(threads)) schedule(static)
    for (int64_t task = 0; task < N * parts; task++) {
        const int64_t n = task / parts, first = (task % parts) * rows_per_part;
        const float *br = b + n * C;
        float *acc = db_parts + task * C;
        std::fill(acc, acc + C, 0.0f);
        row_blocks<ROWS>(n * T + first, n * T + std::min(first + rows_per_part, T), [&](int64_t row, auto count) {
            constexpr int R = decltype(count)::value;
            for (int64_t c = 0; c < C; c += W) {
                const int64_t w = std::min<int64_t>(W, C - c);
                const vf bias = load_n(br + c, w);
                vf z[R], cdf[R], pdf[R];
                for (int u = 0; u < R; u++) z[u] = load_n(x + (row + u) * C + c, w) + bias;
                normal_cdf_n<R>(z, cdf, pdf);
                vf sum = load_n(acc + c, w);
                for (int u = 0; u < R; u++) {
                    const vf g = load_n(dy + (row + u) * C + c, w) * (cdf[u] + z[u] * pdf[u]);
                    store_n(dx + (row + u) * C + c, g, w);
                    sum += g;
                }
                store_n(acc + c, sum, w);
            }
        });
    }
}
}
