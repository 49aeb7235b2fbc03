// W-wide float vectors for the compiled CPU kernels (GCC/Clang vector extensions), W the host's
// native width: 16 with AVX-512, 8 with AVX (AVX2 hosts such as AMD Zen 1-3), else 4 (SSE, NEON).
// A width the host lacks would not do: GCC lowers a 16-wide compare, select or min on AVX2 into
// one scalar operation per lane, which made every kernel several times slower than torch there.
#pragma once
#include <cstdint>
#include <climits>
#include <cstring>
#include <type_traits>
#if defined(__AVX__) || defined(__SSE__)
#include <immintrin.h>
#endif

namespace fedbrb {
#if defined(__AVX512F__)
constexpr int W = 16;
#elif defined(__AVX__)
constexpr int W = 8;
#else
constexpr int W = 4;
#endif
// Vector registers of the ISA (AVX-512 and NEON 32, AVX and SSE 16): bounds how many rows a kernel
// keeps in flight side by side.
#if defined(__AVX512F__) || defined(__aarch64__)
constexpr int REGISTERS = 32;
#else
constexpr int REGISTERS = 16;
#endif
typedef float vf __attribute__((vector_size(W * 4)));
typedef int32_t vi __attribute__((vector_size(W * 4)));

inline vf splat(float x) { return vf{} + x; }
inline vf vmax(vf a, vf b) { return a > b ? a : b; }
inline vf vmin(vf a, vf b) { return a < b ? a : b; }
inline vf load(const float *p) { vf v; std::memcpy(&v, p, sizeof v); return v; }
inline void store(float *p, vf v) { std::memcpy(p, &v, sizeof v); }

// The first n < W floats at p, the other lanes zero (a row's tail).
inline vf load_tail(const float *p, int64_t n) {
    float lanes[W] = {};
    std::memcpy(lanes, p, n * sizeof(float));
    return load(lanes);
}
inline void store_tail(float *p, vf v, int64_t n) {
    float lanes[W];
    store(lanes, v);
    std::memcpy(p, lanes, n * sizeof(float));
}

// A block of D vectors x[d] (lane t holds element d of item t) to D vectors of W / D whole items
// each (x[r] holds items r * W / D ... in order, D elements apiece: the items' memory layout), and
// back: log2(D) stages of two-input shuffles (the perfect shuffle), instead of W * D scalar moves
// or gathers. D is a power of two at most W.
#if defined(__AVX512F__)
inline vf interleave_low(vf a, vf b) {
    return __builtin_shuffle(a, b, vi{0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23});
}
inline vf interleave_high(vf a, vf b) {
    return __builtin_shuffle(a, b, vi{8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31});
}
inline vf even_lanes(vf a, vf b) {
    return __builtin_shuffle(a, b, vi{0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30});
}
inline vf odd_lanes(vf a, vf b) {
    return __builtin_shuffle(a, b, vi{1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31});
}
#elif defined(__AVX__)
inline vf interleave_low(vf a, vf b) { return __builtin_shuffle(a, b, vi{0, 8, 1, 9, 2, 10, 3, 11}); }
inline vf interleave_high(vf a, vf b) { return __builtin_shuffle(a, b, vi{4, 12, 5, 13, 6, 14, 7, 15}); }
inline vf even_lanes(vf a, vf b) { return __builtin_shuffle(a, b, vi{0, 2, 4, 6, 8, 10, 12, 14}); }
inline vf odd_lanes(vf a, vf b) { return __builtin_shuffle(a, b, vi{1, 3, 5, 7, 9, 11, 13, 15}); }
#else
inline vf interleave_low(vf a, vf b) { return __builtin_shuffle(a, b, vi{0, 4, 1, 5}); }
inline vf interleave_high(vf a, vf b) { return __builtin_shuffle(a, b, vi{2, 6, 3, 7}); }
inline vf even_lanes(vf a, vf b) { return __builtin_shuffle(a, b, vi{0, 2, 4, 6}); }
inline vf odd_lanes(vf a, vf b) { return __builtin_shuffle(a, b, vi{1, 3, 5, 7}); }
#endif

template <int D>
inline void lanes_to_items(vf *x) {
    static_assert(D >= 1 && D <= W && (D & (D - 1)) == 0, "D must be a power of two at most W");
    for (int stage = 1; stage < D; stage *= 2) {
        vf y[D];
        for (int j = 0; j < D / 2; j++) {
            y[2 * j] = interleave_low(x[j], x[j + D / 2]);
            y[2 * j + 1] = interleave_high(x[j], x[j + D / 2]);
        }
        for (int j = 0; j < D; j++) x[j] = y[j];
    }
}

template <int D>
inline void items_to_lanes(vf *x) {
    static_assert(D >= 1 && D <= W && (D & (D - 1)) == 0, "D must be a power of two at most W");
    for (int stage = 1; stage < D; stage *= 2) {
        vf y[D];
        for (int j = 0; j < D / 2; j++) {
            y[j] = even_lanes(x[2 * j], x[2 * j + 1]);
            y[j + D / 2] = odd_lanes(x[2 * j], x[2 * j + 1]);
        }
        for (int j = 0; j < D; j++) x[j] = y[j];
    }
}

// The sum of v's lanes, in every lane: a butterfly over lane partners i ^ W / 2, ..., 2, 1, so each
// pair of lanes adds the same two values and every lane ends with the same bits.
inline vf all_lanes_sum(vf v) {
#if defined(__AVX512F__)
    v += __builtin_shuffle(v, vi{8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7});
    v += __builtin_shuffle(v, vi{4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11});
    v += __builtin_shuffle(v, vi{2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13});
    return v + __builtin_shuffle(v, vi{1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14});
#elif defined(__AVX__)
    v += __builtin_shuffle(v, vi{4, 5, 6, 7, 0, 1, 2, 3});
    v += __builtin_shuffle(v, vi{2, 3, 0, 1, 6, 7, 4, 5});
    return v + __builtin_shuffle(v, vi{1, 0, 3, 2, 5, 4, 7, 6});
#else
    v += __builtin_shuffle(v, vi{2, 3, 0, 1});
    return v + __builtin_shuffle(v, vi{1, 0, 3, 2});
#endif
}

// Calls f(row, std::integral_constant<int, R>) for blocks of R rows in [first, last), then
// f(row, std::integral_constant<int, 1>) for the rows left: R rows side by side give the
// processor independent chains to interleave.
template <int R, class F>
inline void row_blocks(int64_t first, int64_t last, F f) {
    int64_t r = first;
    for (; r + R <= last; r += R) f(r, std::integral_constant<int, R>{});
    for (; r < last; r++) f(r, std::integral_constant<int, 1>{});
}

// row_blocks over rows [0, rows), its blocks of R rows shared among `threads` OpenMP threads.
template <int R, class F>
inline void parallel_row_blocks(int64_t rows, int64_t threads, F f) {
    const int64_t blocks = (rows + R - 1) / R;
#pragma omp parallel for num_threads(int(threads)) schedule(static)
    for (int64_t block = 0; block < blocks; block++) row_blocks<R>(block * R, block * R + R < rows ? block * R + R : rows, f);
}

inline vf vsqrt(vf x) {
#if defined(__AVX512F__)
    return (vf)_mm512_sqrt_ps((__m512)x);
#elif defined(__AVX__)
    return (vf)_mm256_sqrt_ps((__m256)x);
#elif defined(__SSE__)
    return (vf)_mm_sqrt_ps((__m128)x);
#else
    float lanes[W];
    store(lanes, x);
    for (int t = 0; t < W; t++) lanes[t] = __builtin_sqrtf(lanes[t]);
    return load(lanes);
#endif
}

// 1 / sqrt(x) for x > 0: AVX-512's 14-bit estimate and one Newton step (~2 ulp), else a square
// root and a division (once per row where it is used).
inline vf vrsqrt(vf x) {
#if defined(__AVX512F__)
    const vf r = (vf)_mm512_rsqrt14_ps((__m512)x);
    return r * (1.5f - 0.5f * x * r * r);
#else
    return 1.0f / vsqrt(x);
#endif
}

inline bool all_at_most(vf x, float bound) {
    float lanes[W];
    store(lanes, x);
    for (int t = 0; t < W; t++)
        if (!(lanes[t] <= bound)) return false;
    return true;
}

// 1 / x: the 14-bit (AVX-512) or 12-bit (AVX) estimate and one Newton step (~1 and ~2 ulp), else a
// division (a vector division costs about as much as the rest of a GELU).
inline vf vrcp(vf x) {
#if defined(__AVX512F__)
    const vf r = (vf)_mm512_rcp14_ps((__m512)x);
    return r * (2.0f - x * r);
#elif defined(__AVX__)
    const vf r = (vf)_mm256_rcp_ps((__m256)x);
    return r * (2.0f - x * r);
#else
    return 1.0f / x;
#endif
}

// exp(x) in vector arithmetic (a libm call per lane would not vectorize), x clamped to [-80, 80]
// (e^-80 ~ 2e-35): x = n ln2 + r with |r| <= ln2 / 2, e^r by its Taylor polynomial, times 2^n.
// With AVX-512, n is rounded and 2^n applied by one instruction each (roundscale, scalef) and
// degree 6 suffices (relative error < 2e-7); elsewhere 2^n is written into the exponent bits,
// degree 7 (< 3e-7). vexp_n takes N vectors stage by stage: one exponential is a chain of
// dependent operations, and N independent chains side by side keep the vector units busy where
// the processor would not look far enough ahead.
template <int N>
inline void vexp_n(vf *x) {
    vf r[N], p[N];
    for (int u = 0; u < N; u++) x[u] = vmin(vmax(x[u], splat(-80.0f)), splat(80.0f));
#if defined(__AVX512F__)
    vf n[N];
    for (int u = 0; u < N; u++)
        n[u] = (vf)_mm512_roundscale_ps((__m512)(x[u] * 1.44269504088896341f), _MM_FROUND_TO_NEAREST_INT);
    for (int u = 0; u < N; u++) r[u] = x[u] - n[u] * 0.693147180559945309f;
    for (int u = 0; u < N; u++) p[u] = 1.38888889e-3f * r[u] + 8.33333333e-3f;
#else
    vi n[N];
    for (int u = 0; u < N; u++)
        n[u] = __builtin_convertvector(x[u] * 1.44269504088896341f + 128.5f, vi) - 128;  // round(x / ln2)
    for (int u = 0; u < N; u++) r[u] = x[u] - __builtin_convertvector(n[u], vf) * 0.693147180559945309f;
    for (int u = 0; u < N; u++) p[u] = 1.98412698e-4f * r[u] + 1.38888889e-3f;
    for (int u = 0; u < N; u++) p[u] = p[u] * r[u] + 8.33333333e-3f;
#endif
    for (int u = 0; u < N; u++) p[u] = p[u] * r[u] + 4.16666667e-2f;
    for (int u = 0; u < N; u++) p[u] = p[u] * r[u] + 1.66666667e-1f;
    for (int u = 0; u < N; u++) p[u] = p[u] * r[u] + 0.5f;
    for (int u = 0; u < N; u++) p[u] = p[u] * r[u] + 1.0f;
    for (int u = 0; u < N; u++) p[u] = p[u] * r[u] + 1.0f;
#if defined(__AVX512F__)
    for (int u = 0; u < N; u++) x[u] = (vf)_mm512_scalef_ps((__m512)p[u], (__m512)n[u]);
#else
    for (int u = 0; u < N; u++) x[u] = p[u] * (vf)((n[u] + 127) << 23);
#endif
}

inline vf vexp(vf x) {
    vexp_n<1>(&x);
    return x;
}

// log(x) for normal x > 0 (Cephes' logf, ~1 ulp): x = m 2^e with m in [sqrt(1/2), sqrt(2)),
// log(1 + f) for f = m - 1 by its polynomial, plus e ln2 in two parts.
inline vf vlog(vf x) {
    const vi bits = (vi)x;
    vi e = ((bits >> 23) & 0xff) - 126;
    vf m = (vf)((bits & 0x807fffff) | 0x3f000000);  // [0.5, 1)
    const vi small = m < 0.707106781186547524f;
    e += small;  // -1 where small
    m = small ? m + m : m;
    const vf f = m - 1.0f, z = f * f;
    vf y = ((((((((7.0376836292e-2f * f - 1.1514610310e-1f) * f + 1.1676998740e-1f) * f - 1.2420140846e-1f) * f
                  + 1.4249322787e-1f) * f - 1.6668057665e-1f) * f + 2.0000714765e-1f) * f - 2.4999993993e-1f) * f
           + 3.3333331174e-1f) * f * z;
    const vf ef = __builtin_convertvector(e, vf);
    y += -2.12194440e-4f * ef - 0.5f * z;
    return f + y + 0.693359375f * ef;
}
}  // namespace fedbrb
