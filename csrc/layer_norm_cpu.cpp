// LayerNorm without affine over the rows of a contiguous [R, C] float32 tensor
// (kernels/layer_norm_cpu.py). At the Transformer's widths a row holds 16-64 floats, and torch's
// kernel spends more on its per-row set-up than on the row; here a row is a few vector operations.
// The backward takes the forward's output y (the next GEMM saves it anyway) and 1 / std per row:
// dx = rstd * (dy - mean(dy) - y * mean(dy * y)).
//
// Rows of V = C / W whole vectors, up to 64 floats, stay in registers, rows_for<V>() of them side
// by side, their sums taken across lanes by a butterfly (all_lanes_sum); other widths take the
// scalar loops.
#include <cmath>
#include <cstdint>

#include "simd_cpu.h"

namespace {
using namespace fedbrb;

constexpr int MAX_VECTORS = 64 / W;  // widths up to 64 floats are held in registers

// Rows computed side by side: 4, fewer where a block's rows (input and gradient, V vectors each)
// would not fit in the vector registers.
template <int V>
constexpr int rows_for() {
    constexpr int fit = REGISTERS / (2 * V);
    return fit >= 4 ? 4 : fit >= 1 ? fit : 1;
}

// f(std::integral_constant<int, V>) for rows of V = C / W <= MAX_VECTORS whole vectors; false
// (nothing called) for other widths, which take the scalar loops.
template <int V = 1, class F>
inline bool with_vectors(int64_t C, F f) {
    if constexpr (V > MAX_VECTORS) {
        return false;
    } else {
        if (C == V * W) {
            f(std::integral_constant<int, V>{});
            return true;
        }
        return with_vectors<V + 1>(C, f);
    }
}

// Writes row x normalized into y; returns 1 / std.
inline float normalize_row(const float *x, float *y, int64_t C, float eps) {
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t c = 0; c < C; c++) sum += x[c];
    const float mean = sum / float(C);
    float sq = 0.0f;
#pragma omp simd reduction(+ : sq)
    for (int64_t c = 0; c < C; c++) sq += (x[c] - mean) * (x[c] - mean);
    const float inv = 1.0f / std::sqrt(sq / float(C) + eps);
#pragma omp simd
    for (int64_t c = 0; c < C; c++) y[c] = (x[c] - mean) * inv;
    return inv;
}

// Rows r .. r + R - 1 of V vectors: y = LN(x) and rstd; with `bias` (one row per group of T rows),
// also shifted = x + bias.
template <int V, int R>
inline void normalize_rows(const float *x, float *y, float *rstd, int64_t r, float eps, const float *bias,
                           float *shifted, int64_t T) {
    constexpr int C = V * W;
    vf v[R][V], mean[R], sq[R];
    for (int u = 0; u < R; u++) {
        const int64_t at = (r + u) * C;
        vf sum{};
        for (int j = 0; j < V; j++) {
            v[u][j] = load(x + at + j * W);
            sum += v[u][j];
            if (bias) store(shifted + at + j * W, v[u][j] + load(bias + (r + u) / T * C + j * W));
        }
        mean[u] = all_lanes_sum(sum) * (1.0f / C);
    }
    for (int u = 0; u < R; u++) {
        vf s{};
        for (int j = 0; j < V; j++) {
            v[u][j] -= mean[u];
            s += v[u][j] * v[u][j];
        }
        sq[u] = all_lanes_sum(s);
    }
    for (int u = 0; u < R; u++) {
        const vf inv = vrsqrt(sq[u] * (1.0f / C) + eps);
        rstd[r + u] = inv[0];
        for (int j = 0; j < V; j++) store(y + (r + u) * C + j * W, v[u][j] * inv);
    }
}

template <int V>
void forward_vectors(const float *x, const float *bias, float *y, float *shifted, float *rstd, int64_t rows,
                     int64_t T, float eps, int64_t threads) {
    parallel_row_blocks<rows_for<V>()>(rows, threads, [&](int64_t r, auto count) {
        normalize_rows<V, decltype(count)::value>(x, y, rstd, r, eps, bias, shifted, T);
    });
}

// mean(dy) and mean(dy * y) over a row.
inline void gradient_means(const float *y, const float *dy, int64_t C, float *mg, float *mgy) {
    float g = 0.0f, gy = 0.0f;
#pragma omp simd reduction(+ : g, gy)
    for (int64_t c = 0; c < C; c++) {
        g += dy[c];
        gy += dy[c] * y[c];
    }
    *mg = g / float(C);
    *mgy = gy / float(C);
}

// dx of rows r .. r + R - 1 of V vectors; with `dshifted`, plus its rows, which are added to acc.
template <int V, int R>
inline void normalize_rows_backward(const float *y, const float *rstd, const float *dy, float *dx, int64_t r,
                                    const float *dshifted, vf *acc) {
    constexpr int C = V * W;
    vf g[R][V], yv[R][V], mg[R], mgy[R];
    for (int u = 0; u < R; u++) {
        vf sg{}, sgy{};
        for (int j = 0; j < V; j++) {
            g[u][j] = load(dy + (r + u) * C + j * W);
            yv[u][j] = load(y + (r + u) * C + j * W);
            sg += g[u][j];
            sgy += g[u][j] * yv[u][j];
        }
        mg[u] = all_lanes_sum(sg) * (1.0f / C);
        mgy[u] = all_lanes_sum(sgy) * (1.0f / C);
    }
    for (int u = 0; u < R; u++) {
        const vf inv = splat(rstd[r + u]);
        for (int j = 0; j < V; j++) {
            vf out = inv * (g[u][j] - mg[u] - yv[u][j] * mgy[u]);
            if (dshifted) {
                const vf ds = load(dshifted + (r + u) * C + j * W);
                out += ds;
                acc[j] += ds;
            }
            store(dx + (r + u) * C + j * W, out);
        }
    }
}

template <int V>
void backward_vectors(const float *y, const float *rstd, const float *dy, float *dx, int64_t rows, int64_t threads) {
    parallel_row_blocks<rows_for<V>()>(rows, threads, [&](int64_t r, auto count) {
        normalize_rows_backward<V, decltype(count)::value>(y, rstd, dy, dx, r, nullptr, nullptr);
    });
}

template <int V>
void shift_backward_vectors(const float *y, const float *rstd, const float *dy, const float *dshifted, float *dx,
                            float *db_parts, int64_t N, int64_t T, int64_t rows_per_part, int64_t threads) {
    const int64_t parts = (T + rows_per_part - 1) / rows_per_part;
#pragma omp parallel for num_threads(int(threads)) schedule(static)
    for (int64_t task = 0; task < N * parts; task++) {
        const int64_t n = task / parts, first = (task % parts) * rows_per_part;
        const int64_t last = first + rows_per_part < T ? first + rows_per_part : T;
        vf acc[V] = {};
        row_blocks<rows_for<V>()>(n * T + first, n * T + last, [&](int64_t r, auto count) {
            normalize_rows_backward<V, decltype(count)::value>(y, rstd, dy, dx, r, dshifted, acc);
        });
        for (int j = 0; j < V; j++) store(db_parts + task * V * W + j * W, acc[j]);
    }
}
}  // namespace

extern "C" {
void fedbrb_layer_norm_forward(const float *x, float *y, float *rstd, int64_t rows, int64_t C, float eps,
                               int64_t threads) {
    if (with_vectors(C, [&](auto v) {
            forward_vectors<decltype(v)::value>(x, nullptr, y, nullptr, rstd, rows, 1, eps, threads);
        }))
        return;
#pragma omp parallel for num_threads(int(threads)) schedule(static)
    for (int64_t r = 0; r < rows; r++) rstd[r] = normalize_row(x + r * C, y + r * C, C, eps);
}

void fedbrb_layer_norm_backward(const float *y, const float *rstd, const float *dy, float *dx, int64_t rows,
                                int64_t C, int64_t threads) {
    if (with_vectors(C, [&](auto v) { backward_vectors<decltype(v)::value>(y, rstd, dy, dx, rows, threads); }))
        return;
#pragma omp parallel for num_threads(int(threads)) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *yr = y + r * C, *gr = dy + r * C;
        float *out = dx + r * C;
        float mg, mgy;
        gradient_means(yr, gr, C, &mg, &mgy);
        const float inv = rstd[r];
#pragma omp simd
        for (int64_t c = 0; c < C; c++) out[c] = inv * (gr[c] - mg - yr[c] * mgy);
    }
}
}

// A residual stream row feeds a LayerNorm and, plus the next residual layer's bias (one per group
// of T rows), the GEMM that accumulates into it: y = LN(x) and shifted = x + b in one pass. The
// backward adds the gradient that reached `shifted` to the norm's input gradient (where the stream
// branches, so autograd writes no separate sum) and sums it over each part of rows_per_part rows
// of a group for the bias gradient (db_parts [N, parts, C], summed by the caller).
extern "C" {
void fedbrb_layer_norm_shift_forward(const float *x, const float *b, float *y, float *shifted, float *rstd, int64_t N,
                                     int64_t T, int64_t C, float eps, int64_t threads) {
    if (with_vectors(C, [&](auto v) {
            forward_vectors<decltype(v)::value>(x, b, y, shifted, rstd, N * T, T, eps, threads);
        }))
        return;
#pragma omp parallel for num_threads(int(threads)) schedule(static)
    for (int64_t r = 0; r < N * T; r++) {
        const float *xr = x + r * C, *br = b + (r / T) * C;
        float *sr = shifted + r * C;
        rstd[r] = normalize_row(xr, y + r * C, C, eps);
#pragma omp simd
        for (int64_t c = 0; c < C; c++) sr[c] = xr[c] + br[c];
    }
}

void fedbrb_layer_norm_shift_backward(const float *y, const float *rstd, const float *dy, const float *dshifted,
                                      float *dx, float *db_parts, int64_t N, int64_t T, int64_t C,
                                      int64_t rows_per_part, int64_t threads) {
    if (with_vectors(C, [&](auto v) {
            shift_backward_vectors<decltype(v)::value>(y, rstd, dy, dshifted, dx, db_parts, N, T, rows_per_part,
                                                       threads);
        }))
        return;
    const int64_t parts = (T + rows_per_part - 1) / rows_per_part;
#pragma omp parallel for num_threads(int(threads)) schedule(static)
    for (int64_t task = 0; task < N * parts; task++) {
        const int64_t n = task / parts, first = (task % parts) * rows_per_part;
        const int64_t last = first + rows_per_part < T ? first + rows_per_part : T;
        float *acc = db_parts + task * C;
        for (int64_t c = 0; c < C; c++) acc[c] = 0.0f;
        for (int64_t r = n * T + first; r < n * T + last; r++) {
            const float *yr = y + r * C, *gr = dy + r * C, *sr = dshifted + r * C;
            float *out = dx + r * C;
            float mg, mgy;
            gradient_means(yr, gr, C, &mg, &mgy);
            const float inv = rstd[r];
#pragma omp simd
            for (int64_t c = 0; c < C; c++) {
                out[c] = inv * (gr[c] - mg - yr[c] * mgy) + sr[c];
                acc[c] += sr[c];
            }
        }
    }
}
}
