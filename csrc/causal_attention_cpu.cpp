// Causal softmax attention on the CPU for small head dimensions (kernels/causal_attention_cpu.py).
//
// At a head dimension of 2-8 every score is a 2-8 term dot product, so a kernel that vectorizes
// along the head dimension (PyTorch's flash attention) leaves the vector units idle. Here each
// SIMD lane is one (sequence, head) pair: W pairs form a group, packed into lane-major buffers
// [L, D, W], and every score, exponential and accumulation is one W-wide vector operation.
//
// Tensors are [S, L, H, D] with unit stride along D; q, k and v share their other strides.
// out, dq, dk, dv are contiguous [S, L, H, D]; lse (the log-sum-exp of each row's scaled scores,
// saved by the forward for the backward) is [groups, L, W]. Groups are split across OpenMP
// threads: loaded into a process that has imported torch, the library shares torch's libgomp
// (same soname), so it runs on torch's already-spinning intra-op threads instead of competing with them.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {
constexpr int W = 16;
typedef float vf __attribute__((vector_size(W * 4)));
typedef int32_t vi __attribute__((vector_size(W * 4)));

inline vf splat(float x) { return vf{} + x; }
inline vf vmax(vf a, vf b) { return a > b ? a : b; }
inline vf load(const float *p) { vf v; std::memcpy(&v, p, sizeof v); return v; }
inline void store(float *p, vf v) { std::memcpy(p, &v, sizeof v); }

// exp(x) for x <= 0 in vector arithmetic (a libm call per lane would not vectorize):
// x = -n ln2 + r with |r| <= ln2 / 2, e^r by its degree-7 Taylor polynomial (relative error
// < 3e-7), 2^-n written into the exponent bits. Below -80 (e^-80 ~ 2e-35) it returns e^-80.
inline vf exp_neg(vf x) {
    x = vmax(x, splat(-80.0f));
    const vi n = __builtin_convertvector(0.5f - x * 1.44269504088896341f, vi);
    const vf r = x + __builtin_convertvector(n, vf) * 0.693147180559945309f;
    const vf p = ((((((1.98412698e-4f * r + 1.38888889e-3f) * r + 8.33333333e-3f) * r + 4.16666667e-2f) * r
                    + 1.66666667e-1f) * r + 0.5f) * r + 1.0f) * r + 1.0f;
    return p * (vf)((127 - n) << 23);
}

struct Strides {
    int64_t s, i, h;
};

// Lane t of group g is the pair g * W + t = (s, h); pairs past S * H are padding (zeros).
template <int D>
void pack(const float *x, Strides st, int64_t S, int64_t L, int64_t H, int64_t g, float *buf) {
    for (int t = 0; t < W; t++) {
        const int64_t pair = g * W + t;
        const bool real = pair < S * H;
        const float *src = real ? x + (pair / H) * st.s + (pair % H) * st.h : nullptr;
        for (int64_t i = 0; i < L; i++)
            for (int d = 0; d < D; d++) buf[(i * D + d) * W + t] = real ? src[i * st.i + d] : 0.0f;
    }
}

// Writes row i (D vectors) of group g into contiguous [S, L, H, D].
template <int D>
void unpack_row(const vf *row, int64_t S, int64_t L, int64_t H, int64_t g, int64_t i, float *x) {
    float lanes[D][W];
    for (int d = 0; d < D; d++) store(lanes[d], row[d]);
    for (int t = 0; t < W; t++) {
        const int64_t pair = g * W + t;
        if (pair >= S * H) break;
        float *dst = x + (((pair / H) * L + i) * H + pair % H) * D;
        for (int d = 0; d < D; d++) dst[d] = lanes[d][t];
    }
}

// Two passes over the keys of row i: the row maximum, then exponentials and their sums.
template <int D>
void forward(const float *q, const float *k, const float *v, Strides st, float *out, float *lse, int64_t S, int64_t L,
             int64_t H, int threads, float scale) {
    const int64_t groups = (S * H + W - 1) / W;
#pragma omp parallel num_threads(threads)
    {
    std::vector<float> qb(L * D * W), kb(L * D * W), vb(L * D * W);
#pragma omp for schedule(static)
    for (int64_t g = 0; g < groups; g++) {
        pack<D>(q, st, S, L, H, g, qb.data());
        pack<D>(k, st, S, L, H, g, kb.data());
        pack<D>(v, st, S, L, H, g, vb.data());
        for (int64_t i = 0; i < L; i++) {
            vf qi[D], acc[D];
            for (int d = 0; d < D; d++) {
                qi[d] = load(&qb[(i * D + d) * W]) * scale;
                acc[d] = vf{};
            }
            vf m = splat(-3.0e38f), l = vf{};
            for (int64_t j = 0; j <= i; j++) {
                vf s = vf{};
                for (int d = 0; d < D; d++) s += qi[d] * load(&kb[(j * D + d) * W]);
                m = vmax(m, s);
            }
            for (int64_t j = 0; j <= i; j++) {
                vf s = vf{};
                for (int d = 0; d < D; d++) s += qi[d] * load(&kb[(j * D + d) * W]);
                const vf p = exp_neg(s - m);
                l += p;
                for (int d = 0; d < D; d++) acc[d] += p * load(&vb[(j * D + d) * W]);
            }
            float lf[W], mf[W];
            store(lf, l);
            store(mf, m);
            for (int t = 0; t < W; t++) lse[(g * L + i) * W + t] = mf[t] + std::log(lf[t]);
            const vf inv = 1.0f / l;
            for (int d = 0; d < D; d++) acc[d] *= inv;
            unpack_row<D>(acc, S, L, H, g, i, out);
        }
    }
    }
}

// Keys outer, so dK and dV of key j stay in registers while dQ accumulates in a buffer.
template <int D>
void backward(const float *q, const float *k, const float *v, Strides st, const float *out, const float *dout,
              Strides gst, const float *lse, float *dq, float *dk, float *dv, int64_t S, int64_t L, int64_t H,
              int threads, float scale) {
    const Strides contiguous{L * H * D, H * D, D};
    const int64_t groups = (S * H + W - 1) / W;
#pragma omp parallel num_threads(threads)
    {
    std::vector<float> qb(L * D * W), kb(L * D * W), vb(L * D * W), ob(L * D * W), gb(L * D * W), dqb(L * D * W);
    std::vector<vf> di(L);
#pragma omp for schedule(static)
    for (int64_t g = 0; g < groups; g++) {
        pack<D>(q, st, S, L, H, g, qb.data());
        pack<D>(k, st, S, L, H, g, kb.data());
        pack<D>(v, st, S, L, H, g, vb.data());
        pack<D>(out, contiguous, S, L, H, g, ob.data());
        pack<D>(dout, gst, S, L, H, g, gb.data());
        for (int64_t i = 0; i < L; i++) {
            vf acc = vf{};
            for (int d = 0; d < D; d++) acc += load(&gb[(i * D + d) * W]) * load(&ob[(i * D + d) * W]);
            di[i] = acc;
        }
        std::fill(dqb.begin(), dqb.end(), 0.0f);
        for (int64_t j = 0; j < L; j++) {
            vf kj[D], vj[D], dkj[D], dvj[D];
            for (int d = 0; d < D; d++) {
                kj[d] = load(&kb[(j * D + d) * W]);
                vj[d] = load(&vb[(j * D + d) * W]);
                dkj[d] = vf{};
                dvj[d] = vf{};
            }
            for (int64_t i = j; i < L; i++) {
                vf qi[D], gi[D];
                vf s = vf{}, dp = vf{};
                for (int d = 0; d < D; d++) {
                    qi[d] = load(&qb[(i * D + d) * W]);
                    gi[d] = load(&gb[(i * D + d) * W]);
                    s += qi[d] * kj[d];
                    dp += gi[d] * vj[d];
                }
                const vf p = exp_neg(s * scale - load(lse + (g * L + i) * W));
                const vf ds = p * (dp - di[i]) * scale;
                for (int d = 0; d < D; d++) {
                    dvj[d] += p * gi[d];
                    dkj[d] += ds * qi[d];
                    float *dqi = &dqb[(i * D + d) * W];
                    store(dqi, load(dqi) + ds * kj[d]);
                }
            }
            unpack_row<D>(dkj, S, L, H, g, j, dk);
            unpack_row<D>(dvj, S, L, H, g, j, dv);
        }
        for (int64_t i = 0; i < L; i++) {
            vf row[D];
            for (int d = 0; d < D; d++) row[d] = load(&dqb[(i * D + d) * W]);
            unpack_row<D>(row, S, L, H, g, i, dq);
        }
    }
    }
}
}  // namespace

extern "C" {
int fedbrb_attention_lanes() { return W; }

// Returns 0, or 1 for a head dimension without a compiled variant.
int fedbrb_attention_forward(const float *q, const float *k, const float *v, int64_t ss, int64_t si, int64_t sh,
                             float *out, float *lse, int64_t S, int64_t L, int64_t H, int64_t D, int64_t threads,
                             float scale) {
    const Strides st{ss, si, sh};
    switch (D) {
    case 2: forward<2>(q, k, v, st, out, lse, S, L, H, int(threads), scale); return 0;
    case 4: forward<4>(q, k, v, st, out, lse, S, L, H, int(threads), scale); return 0;
    case 8: forward<8>(q, k, v, st, out, lse, S, L, H, int(threads), scale); return 0;
    default: return 1;
    }
}

int fedbrb_attention_backward(const float *q, const float *k, const float *v, int64_t ss, int64_t si, int64_t sh,
                              const float *out, const float *dout, int64_t gs, int64_t gi, int64_t gh,
                              const float *lse, float *dq, float *dk, float *dv, int64_t S, int64_t L, int64_t H,
                              int64_t D, int64_t threads, float scale) {
    const Strides st{ss, si, sh}, gst{gs, gi, gh};
    switch (D) {
    case 2: backward<2>(q, k, v, st, out, dout, gst, lse, dq, dk, dv, S, L, H, int(threads), scale); return 0;
    case 4: backward<4>(q, k, v, st, out, dout, gst, lse, dq, dk, dv, S, L, H, int(threads), scale); return 0;
    case 8: backward<8>(q, k, v, st, out, dout, gst, lse, dq, dk, dv, S, L, H, int(threads), scale); return 0;
    default: return 1;
    }
}
}
