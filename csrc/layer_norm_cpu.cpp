// LayerNorm without affine over the rows of a contiguous [R, C] float32 tensor
// (kernels/layer_norm_cpu.py). At the Transformer's widths a row holds 16-64 floats, and torch's
// kernel spends more on its per-row set-up than on the row; here a row is a few vector operations.
// The backward takes the forward's output y (the next GEMM saves it anyway) and 1 / std per row:
// dx = rstd * (dy - mean(dy) - y * mean(dy * y)).
#include <cmath>
#include <cstdint>

namespace {
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
}  // namespace

extern "C" {
void fedbrb_layer_norm_forward(const float *x, float *y, float *rstd, int64_t rows, int64_t C, float eps,
                               int64_t threads) {
#pragma omp parallel for num_threads(int(threads)) schedule(static)
    for (int64_t r = 0; r < rows; r++) rstd[r] = normalize_row(x + r * C, y + r * C, C, eps);
}

void fedbrb_layer_norm_backward(const float *y, const float *rstd, const float *dy, float *dx, int64_t rows,
                                int64_t C, int64_t threads) {
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
