// C interface of the fused aggregation kernels (aggregation_kernels.cu): plain pointers and sizes,
// no torch types, so the kernels compile with nvcc alone. The torch binding
// (aggregation_binding.cpp) checks tensors and calls these on the current stream.
//
// Arrays follow kernels/aggregation.py: a [rows, width] and c [1 or rows, c_width] accumulators,
// data [n, k_rows, k_width] client slices, rows [n, k_rows] / cols [n, k_cols] int64 global
// positions (row stride per client may be 0 for a whole axis), optional mask.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum fedbrb_dtype { FEDBRB_F16 = 0, FEDBRB_F32 = 1, FEDBRB_F64 = 2 };

// a += w x, c += w at each C cell's first element; both times mask when mask is not NULL. Clients of weight 0 are skipped. Supported (data, acc)
// dtypes: (f32, f32), (f16, f32), (f32, f64), (f64, f64); others return cudaErrorInvalidValue.
cudaError_t fedbrb_scatter_add(int data_dtype, int acc_dtype, void* a, void* c, const void* data, const void* mask, const void* weights, const int64_t* rows, const int64_t* cols,
                               int64_t n, int64_t k_rows, int64_t k_width, int64_t inner, int64_t width,
                               int64_t rows_client_stride, int64_t cols_client_stride, int64_t c_width,
                               int c_rows_reduced, cudaStream_t stream);

// out = a / c where c > 0 else p (broadcast == 0), or
// out = p + (keep a + lam s[o]) / (keep c + lam w[o]) where the denominator is > 0 else p.
// Supported (out, acc) dtypes: (f32, f32), (f16, f32), (f32, f64), (f64, f64).
cudaError_t fedbrb_apply(int out_dtype, int acc_dtype, int broadcast, void* out, const void* p, const void* a,
                         const void* c, const void* s, const void* w, int64_t numel, int64_t width, int c_many_rows,
                         int64_t c_width, int64_t s_rows, int64_t s_width, int64_t w_rows, int64_t w_width,
                         double lam, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
