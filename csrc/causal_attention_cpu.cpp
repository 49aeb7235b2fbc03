// Causal softmax attention on the CPU for small head dimensions (kernels/causal_attention_cpu.py).
//
// At a head dimension of 2-8 every score is a 2-8 term dot product, so a kernel that vectorizes
// along the head dimension (PyTorch's flash attention) leaves the vector units idle. Here each
// SIMD lane is one (sequence, head) pair: W pairs form a group, packed into lane-major buffers
// [L, D, W], and every score, exponential and accumulation is one W-wide vector operation.
//
// q, k and v are read where one GEMM wrote them, the thirds of qkv [S, L, 3 * H * D], with their
// bias added as they are packed, and the backward writes their gradients into one such buffer: no
// pass adds the bias, splits q, k, v or concatenates their gradients. lse (the log-sum-exp of each
// row's scaled scores, saved by the forward for the backward) is [groups, L, W]. Groups are split across OpenMP
// threads: loaded into a process that has imported torch, the library shares torch's libgomp
// (same soname), so it runs on torch's already-spinning intra-op threads instead of competing with them.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "simd_cpu.h"

namespace {
using namespace fedbrb;

struct Strides {
    int64_t s, i, h;
};

// Where the lanes read q, k or v: element (s, i, h, d) at x + s * st.s + i * st.i + h * st.h + d,
// plus (with a bias) bias[(s / seqs_per_bias) * bias_stride + h * D + d], times mul.
struct Source {
    const float *x;
    Strides st;
    const float *bias;
    int64_t bias_stride, seqs_per_bias;
    float mul;
};

// Lane t of group g is the pair g * W + t = (s, h); pairs past S * H are padding (zeros). Its
// element (i, d) of a tensor with strides st is at the group's base + offset[t] + i * st.i + d.
struct LaneMap {
    int64_t base;
    int32_t offset[W];
    uint32_t real;  // bit t: lane t is a pair
    bool gatherable;  // every offset fits the 32-bit indices of a vector gather
    // Every lane is a pair and lanes r * W / D ... (r + 1) * W / D - 1 are consecutive heads of one
    // sequence, stored one after another: a row's W * D elements are D contiguous vectors, which
    // shuffles turn into lanes and back (simd_cpu.h).
    bool rows_contiguous;
};

template <int D>
LaneMap lane_map(Strides st, int64_t S, int64_t L, int64_t H, int64_t g) {
    constexpr int64_t heads_per_vector = D <= W ? W / D : 1;  // D > W: no row is a whole vector
    LaneMap m{(g * W / H) * st.s, {}, 0, true,
              D <= W && st.h == D && H % heads_per_vector == 0 && (g + 1) * W <= S * H};
    for (int t = 0; t < W; t++) {
        const int64_t pair = g * W + t;
        if (pair >= S * H) continue;
        const int64_t offset = (pair / H) * st.s + (pair % H) * st.h - m.base;
        m.real |= 1u << t;
        m.offset[t] = int32_t(offset);
        m.gatherable = m.gatherable && offset >= 0 && offset + (L - 1) * st.i + 8 < INT32_MAX;
    }
    return m;
}

// Packs q, k or v of group g into buf [L, D, W] (lane-major).
template <int D>
void pack(const Source &src, int64_t S, int64_t L, int64_t H, int64_t g, float *buf) {
    const LaneMap m = lane_map<D>(src.st, S, L, H, g);
    float b[D][W] = {};
    for (int t = 0; t < W; t++) {
        const int64_t pair = g * W + t;
        if (src.bias && (m.real >> t & 1u))
            for (int d = 0; d < D; d++) b[d][t] = src.bias[(pair / H / src.seqs_per_bias) * src.bias_stride + (pair % H) * D + d];
    }
    vf bias[D];
    for (int d = 0; d < D; d++) bias[d] = load(b[d]);
    const float *x = src.x + m.base;
    if constexpr (D <= W) {
        if (m.rows_contiguous) {
            for (int64_t i = 0; i < L; i++) {
                vf row[D];
                for (int r = 0; r < D; r++) row[r] = load(x + m.offset[r * (W / D)] + i * src.st.i);
                items_to_lanes<D>(row);
                for (int d = 0; d < D; d++) store(&buf[(i * D + d) * W], (row[d] + bias[d]) * src.mul);
            }
            return;
        }
    }
#if defined(__AVX512F__)
    if (m.gatherable) {
        const __m512i idx = _mm512_loadu_si512(m.offset);
        for (int64_t i = 0; i < L; i++)
            for (int d = 0; d < D; d++) {
                const vf v = (vf)_mm512_mask_i32gather_ps(_mm512_setzero_ps(), __mmask16(m.real), idx,
                                                          x + i * src.st.i + d, 4);
                store(&buf[(i * D + d) * W], (v + bias[d]) * src.mul);
            }
        return;
    }
#endif
    for (int t = 0; t < W; t++) {
        const bool real = m.real >> t & 1u;
        for (int64_t i = 0; i < L; i++)
            for (int d = 0; d < D; d++)
                buf[(i * D + d) * W + t] = real ? x[m.offset[t] + i * src.st.i + d] : 0.0f;
    }
    for (int64_t i = 0; i < L; i++)
        for (int d = 0; d < D; d++) store(&buf[(i * D + d) * W], (load(&buf[(i * D + d) * W]) + bias[d]) * src.mul);
}

// Writes row i (D vectors) of group g into x, element (s, i, h, d) at x + s * st.s + i * st.i + h * st.h + d.
template <int D>
void unpack_row(const vf *row, const LaneMap &m, Strides st, int64_t i, float *x) {
    float *dst = x + m.base + i * st.i;  // (a vector scatter measured no faster than this loop)
    if constexpr (D <= W) {
        if (m.rows_contiguous) {
            vf items[D];
            for (int d = 0; d < D; d++) items[d] = row[d];
            lanes_to_items<D>(items);
            for (int r = 0; r < D; r++) store(dst + m.offset[r * (W / D)], items[r]);
            return;
        }
    }
    float lanes[D][W];
    for (int d = 0; d < D; d++) store(lanes[d], row[d]);
    for (int t = 0; t < W; t++)
        if (m.real >> t & 1u)
            for (int d = 0; d < D; d++) dst[m.offset[t] + d] = lanes[d][t];
}

// Scores of a row above this bound (scaled) take two passes over its keys.
constexpr float ONE_PASS_BOUND = 30.0f;
// Keys (forward) or queries (backward) whose exponentials are computed side by side.
constexpr int UNROLL = 4;

// Row i's softmax needs a shift m >= every score (no exponential overflows) that is not far above
// the largest (none underflows). m = |q_i| max_j<=i |k_j| bounds the scores (Cauchy-Schwarz); while
// it is at most ONE_PASS_BOUND the largest score is >= -m, so every e^(s - m) >= e^-60 keeps its
// float precision and one pass computes the exponentials, their sum and the output. Past the
// bound, a first pass finds the row maximum.
template <int D>
void forward(const Source &q, const Source &k, const Source &v, float *out, float *lse, int64_t S, int64_t L, int64_t H,
             int threads) {
    const Strides contiguous{L * H * D, H * D, D};
    const int64_t groups = (S * H + W - 1) / W;
#pragma omp parallel num_threads(threads)
    {
    std::vector<float> qb(L * D * W), kb(L * D * W), vb(L * D * W);
    std::vector<vf> kmax(L);  // max over j <= i of |k_j|^2
#pragma omp for schedule(static)
    for (int64_t g = 0; g < groups; g++) {
        pack<D>(q, S, L, H, g, qb.data());
        pack<D>(k, S, L, H, g, kb.data());
        pack<D>(v, S, L, H, g, vb.data());
        const LaneMap out_map = lane_map<D>(contiguous, S, L, H, g);
        vf running = vf{};
        for (int64_t j = 0; j < L; j++) {
            vf sq = vf{};
            for (int d = 0; d < D; d++) sq += load(&kb[(j * D + d) * W]) * load(&kb[(j * D + d) * W]);
            running = vmax(running, sq);
            kmax[j] = running;
        }
        for (int64_t i = 0; i < L; i++) {
            vf qi[D], acc[D], qsq = vf{};
            for (int d = 0; d < D; d++) {
                qi[d] = load(&qb[(i * D + d) * W]);  // packed times the softmax scale
                qsq += qi[d] * qi[d];
                acc[d] = vf{};
            }
            vf m = vsqrt(qsq * kmax[i]);
            if (!all_at_most(m, ONE_PASS_BOUND)) {
                m = splat(-3.0e38f);
                for (int64_t j = 0; j <= i; j++) {
                    vf s = vf{};
                    for (int d = 0; d < D; d++) s += qi[d] * load(&kb[(j * D + d) * W]);
                    m = vmax(m, s);
                }
            }
            vf l = vf{};
            const auto keys = [&](int64_t j, auto count) {  // keys j .. j + count - 1, side by side
                constexpr int C = decltype(count)::value;
                vf p[C];
                for (int u = 0; u < C; u++) {
                    vf s = vf{};
                    for (int d = 0; d < D; d++) s += qi[d] * load(&kb[((j + u) * D + d) * W]);
                    p[u] = s - m;
                }
                vexp_n<C>(p);
                for (int u = 0; u < C; u++) {
                    l += p[u];
                    for (int d = 0; d < D; d++) acc[d] += p[u] * load(&vb[((j + u) * D + d) * W]);
                }
            };
            int64_t j = 0;
            for (; j + UNROLL <= i + 1; j += UNROLL) keys(j, std::integral_constant<int, UNROLL>{});
            for (; j <= i; j++) keys(j, std::integral_constant<int, 1>{});
            store(lse + (g * L + i) * W, m + vlog(l));
            const vf inv = 1.0f / l;
            for (int d = 0; d < D; d++) acc[d] *= inv;
            unpack_row<D>(acc, out_map, contiguous, i, out);
        }
    }
    }
}

// Keys outer, so dK and dV of key j stay in registers while dQ accumulates in a buffer. The
// queries are taken in blocks of QUERY_ROWS / D rows, so the rows the inner loop sweeps (q, dO
// and dQ, D vectors each) stay in the L1 cache for every key: over all L rows they would stream
// from L2 once per key, and that traffic bounded the loop.
constexpr int64_t QUERY_ROWS = 128;

template <int D>
void backward(const Source &q, const Source &k, const Source &v, const float *out, const float *dout, Strides gst,
              const float *lse, float *dq, float *dk, float *dv, Strides dst, int64_t S, int64_t L, int64_t H,
              int threads, float scale) {  // q is packed times scale: dK needs no factor, dQ one per row
    const Strides contiguous{L * H * D, H * D, D};
    const int64_t groups = (S * H + W - 1) / W;
    constexpr int64_t block = QUERY_ROWS / D;
#pragma omp parallel num_threads(threads)
    {
    std::vector<float> qb(L * D * W), kb(L * D * W), vb(L * D * W), ob(L * D * W), gb(L * D * W);
    std::vector<float> dqb(L * D * W), dkb(L * D * W), dvb(L * D * W);
    std::vector<vf> di(L);
#pragma omp for schedule(static)
    for (int64_t g = 0; g < groups; g++) {
        pack<D>(q, S, L, H, g, qb.data());
        pack<D>(k, S, L, H, g, kb.data());
        pack<D>(v, S, L, H, g, vb.data());
        pack<D>(Source{out, contiguous, nullptr, 0, 1, 1.0f}, S, L, H, g, ob.data());
        pack<D>(Source{dout, gst, nullptr, 0, 1, 1.0f}, S, L, H, g, gb.data());
        const LaneMap grad_map = lane_map<D>(dst, S, L, H, g);
        for (int64_t i = 0; i < L; i++) {
            vf acc = vf{};
            for (int d = 0; d < D; d++) acc += load(&gb[(i * D + d) * W]) * load(&ob[(i * D + d) * W]);
            di[i] = acc;
        }
        std::fill(dqb.begin(), dqb.end(), 0.0f);
        std::fill(dkb.begin(), dkb.end(), 0.0f);
        std::fill(dvb.begin(), dvb.end(), 0.0f);
        for (int64_t first = 0; first < L; first += block) {
            const int64_t end = std::min(L, first + block);
            for (int64_t j = 0; j < end; j++) {
                vf kj[D], vj[D], dkj[D], dvj[D];
                for (int d = 0; d < D; d++) {
                    kj[d] = load(&kb[(j * D + d) * W]);
                    vj[d] = load(&vb[(j * D + d) * W]);
                    dkj[d] = vf{};
                    dvj[d] = vf{};
                }
                const auto rows = [&](int64_t i, auto count) {  // queries i .. i + count - 1, side by side
                    constexpr int C = decltype(count)::value;
                    vf p[C], dp[C];
                    for (int u = 0; u < C; u++) {
                        vf s = vf{};
                        dp[u] = vf{};
                        for (int d = 0; d < D; d++) {
                            s += load(&qb[((i + u) * D + d) * W]) * kj[d];
                            dp[u] += load(&gb[((i + u) * D + d) * W]) * vj[d];
                        }
                        p[u] = s - load(lse + (g * L + i + u) * W);
                    }
                    vexp_n<C>(p);
                    for (int u = 0; u < C; u++) {
                        const vf ds = p[u] * (dp[u] - di[i + u]);
                        for (int d = 0; d < D; d++) {
                            dvj[d] += p[u] * load(&gb[((i + u) * D + d) * W]);
                            dkj[d] += ds * load(&qb[((i + u) * D + d) * W]);
                            float *dqi = &dqb[((i + u) * D + d) * W];
                            store(dqi, load(dqi) + ds * kj[d]);
                        }
                    }
                };
                int64_t i = std::max(first, j);
                for (; i + UNROLL <= end; i += UNROLL) rows(i, std::integral_constant<int, UNROLL>{});
                for (; i < end; i++) rows(i, std::integral_constant<int, 1>{});
                for (int d = 0; d < D; d++) {
                    float *dk_row = &dkb[(j * D + d) * W], *dv_row = &dvb[(j * D + d) * W];
                    store(dk_row, load(dk_row) + dkj[d]);
                    store(dv_row, load(dv_row) + dvj[d]);
                }
            }
        }
        for (int64_t i = 0; i < L; i++) {
            vf dq_row[D], dk_row[D], dv_row[D];
            for (int d = 0; d < D; d++) {
                dq_row[d] = load(&dqb[(i * D + d) * W]) * scale;
                dk_row[d] = load(&dkb[(i * D + d) * W]);
                dv_row[d] = load(&dvb[(i * D + d) * W]);
            }
            unpack_row<D>(dq_row, grad_map, dst, i, dq);
            unpack_row<D>(dk_row, grad_map, dst, i, dk);
            unpack_row<D>(dv_row, grad_map, dst, i, dv);
        }
    }
    }
}
}  // namespace

// q, k and v are the thirds of the last dimension of qkv [S, L, 3 * H * D] (unit stride along it;
// ss, si its sequence and position strides), each plus bias [G, 3 * H * D] (or nullptr) row
// s / seqs_per_bias. out is contiguous [S, L, H, D]; dout has strides gs, gi, gh; dqkv is contiguous
// [S, L, 3 * H * D]. Return 0, or 1 for a head dimension without a compiled variant.
namespace {
template <int D>
void sources(const float *qkv, int64_t ss, int64_t si, const float *bias, int64_t seqs_per_bias, int64_t H,
             float scale, Source out[3]) {
    for (int part = 0; part < 3; part++)
        out[part] = Source{qkv + part * H * D, Strides{ss, si, D}, bias ? bias + part * H * D : nullptr, 3 * H * D,
                           seqs_per_bias, part == 0 ? scale : 1.0f};
}

template <int D>
void run_forward(const float *qkv, int64_t ss, int64_t si, const float *bias, int64_t seqs_per_bias, float *out,
                 float *lse, int64_t S, int64_t L, int64_t H, int threads, float scale) {
    Source src[3];
    sources<D>(qkv, ss, si, bias, seqs_per_bias, H, scale, src);
    forward<D>(src[0], src[1], src[2], out, lse, S, L, H, threads);
}

template <int D>
void run_backward(const float *qkv, int64_t ss, int64_t si, const float *bias, int64_t seqs_per_bias,
                  const float *out, const float *dout, Strides gst, const float *lse, float *dqkv, int64_t S,
                  int64_t L, int64_t H, int threads, float scale) {
    Source src[3];
    sources<D>(qkv, ss, si, bias, seqs_per_bias, H, scale, src);
    const Strides dst{L * 3 * H * D, 3 * H * D, D};
    backward<D>(src[0], src[1], src[2], out, dout, gst, lse, dqkv, dqkv + H * D, dqkv + 2 * H * D, dst, S, L, H,
                threads, scale);
}
}  // namespace

extern "C" {
int fedbrb_attention_lanes() { return W; }

int fedbrb_attention_forward(const float *qkv, int64_t ss, int64_t si, const float *bias, int64_t seqs_per_bias,
                             float *out, float *lse, int64_t S, int64_t L, int64_t H, int64_t D, int64_t threads,
                             float scale) {
    switch (D) {
    case 2: run_forward<2>(qkv, ss, si, bias, seqs_per_bias, out, lse, S, L, H, int(threads), scale); return 0;
    case 4: run_forward<4>(qkv, ss, si, bias, seqs_per_bias, out, lse, S, L, H, int(threads), scale); return 0;
    case 8: run_forward<8>(qkv, ss, si, bias, seqs_per_bias, out, lse, S, L, H, int(threads), scale); return 0;
    default: return 1;
    }
}

int fedbrb_attention_backward(const float *qkv, int64_t ss, int64_t si, const float *bias, int64_t seqs_per_bias,
                              const float *out, const float *dout, int64_t gs, int64_t gi, int64_t gh,
                              const float *lse, float *dqkv, int64_t S, int64_t L, int64_t H, int64_t D,
                              int64_t threads, float scale) {
    const Strides gst{gs, gi, gh};
    switch (D) {
    case 2: run_backward<2>(qkv, ss, si, bias, seqs_per_bias, out, dout, gst, lse, dqkv, S, L, H, int(threads), scale);
        return 0;
    case 4: run_backward<4>(qkv, ss, si, bias, seqs_per_bias, out, dout, gst, lse, dqkv, S, L, H, int(threads), scale);
        return 0;
    case 8: run_backward<8>(qkv, ss, si, bias, seqs_per_bias, out, dout, gst, lse, dqkv, S, L, H, int(threads), scale);
        return 0;
    default: return 1;
    }
}
}
