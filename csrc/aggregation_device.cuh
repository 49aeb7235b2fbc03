// Device code of the fused aggregation kernels: the same computation as kernels/aggregation_triton.py
// and the plain-torch references in kernels/aggregation.py.
//
// Self-contained (no includes under NVRTC), so one source serves both builds:
// aggregation_kernels.cu includes it for nvcc and the torch extension, and
// fedbrb_fast/aggregation/backends/cupy_kernels.py compiles it with NVRTC through cupy.RawModule,
// naming the template instances it launches (e.g. "fedbrb::scatter_add_kernel<float, float>").
//
// scatter_add: a grid-stride loop over every (client, local row, local element); each thread maps
// its element to the global tensor through the index sets and adds into A with atomics (clients
// overlap). apply: one elementwise pass over the global tensor reading the pooled S, W at the
// element's tile offset.
#pragma once

#ifdef __CUDACC_RTC__
typedef long long fedbrb_int64;  // NVRTC ships no <stdint.h>; long long is 64-bit on every CUDA target
#else
#include <stdint.h>
typedef int64_t fedbrb_int64;
#endif

namespace fedbrb {

// IEEE half as raw bits, converted with the PTX instructions cuda_fp16.h uses (NVRTC ships no
// cuda_fp16.h); same layout as torch.float16.
struct half_t {
  unsigned short bits;
};

template <typename acc_t, typename T>
__device__ __forceinline__ acc_t to_acc(T v) { return static_cast<acc_t>(v); }
template <>
__device__ __forceinline__ float to_acc<float, half_t>(half_t v) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.bits));
  return f;
}

template <typename out_t, typename acc_t>
__device__ __forceinline__ out_t from_acc(acc_t v) { return static_cast<out_t>(v); }
template <>
__device__ __forceinline__ half_t from_acc<half_t, float>(float v) {
  half_t h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.bits) : "f"(v));
  return h;
}

template <typename data_t, typename acc_t>
__global__ void scatter_add_kernel(acc_t* __restrict__ a, acc_t* __restrict__ c, const data_t* __restrict__ data,
                                   const acc_t* __restrict__ mask, const acc_t* __restrict__ weights,
                                   const fedbrb_int64* __restrict__ rows, const fedbrb_int64* __restrict__ cols,
                                   fedbrb_int64 total, fedbrb_int64 k_rows, fedbrb_int64 k_width, fedbrb_int64 inner,
                                   fedbrb_int64 width, fedbrb_int64 rows_client_stride,
                                   fedbrb_int64 cols_client_stride, fedbrb_int64 c_width, int c_rows_reduced) {
  const fedbrb_int64 per_client = k_rows * k_width;
  const fedbrb_int64 per_c_col = width / c_width;
  for (fedbrb_int64 e = blockIdx.x * static_cast<fedbrb_int64>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<fedbrb_int64>(gridDim.x) * blockDim.x) {
    const fedbrb_int64 client = e / per_client;
    const acc_t w = weights[client];
    if (w == acc_t(0)) continue;  // weight-0 clients are skipped, finite or not
    const fedbrb_int64 local = e - client * per_client;
    const fedbrb_int64 local_r = local / k_width;
    const fedbrb_int64 local_j = local - local_r * k_width;
    const fedbrb_int64 r = rows[client * rows_client_stride + local_r];
    const fedbrb_int64 j = cols[client * cols_client_stride + local_j / inner] * inner + local_j % inner;
    const fedbrb_int64 dst = r * width + j;
    const acc_t x = to_acc<acc_t>(data[e]);
    const acc_t wm = mask != nullptr ? w * mask[e] : w;
    atomicAdd(a + dst, wm * x);
    if (j % per_c_col == 0 && (!c_rows_reduced || r == 0)) {
      atomicAdd(c + (c_rows_reduced ? 0 : r * c_width) + j / per_c_col, wm);
    }
  }
}

template <typename out_t, typename acc_t, bool kBroadcast>
__global__ void apply_kernel(out_t* __restrict__ out, const out_t* __restrict__ p, const acc_t* __restrict__ a,
                             const acc_t* __restrict__ c, const acc_t* __restrict__ s, const acc_t* __restrict__ w,
                             fedbrb_int64 numel, fedbrb_int64 width, int c_many_rows, fedbrb_int64 c_width,
                             fedbrb_int64 s_rows, fedbrb_int64 s_width, fedbrb_int64 w_rows, fedbrb_int64 w_width,
                             acc_t lam, acc_t tiny) {
  const fedbrb_int64 per_c_col = width / c_width;
  for (fedbrb_int64 e = blockIdx.x * static_cast<fedbrb_int64>(blockDim.x) + threadIdx.x; e < numel;
       e += static_cast<fedbrb_int64>(gridDim.x) * blockDim.x) {
    const fedbrb_int64 r = e / width;
    const fedbrb_int64 j = e - r * width;
    const fedbrb_int64 c_row = c_many_rows ? r : 0;
    const fedbrb_int64 c_col = j / per_c_col;
    const acc_t cv = c[c_row * c_width + c_col];
    const acc_t pv = to_acc<acc_t>(p[e]);
    acc_t result;
    if (kBroadcast) {
      const acc_t keep = acc_t(1) - lam;
      const acc_t den = keep * cv + lam * w[(c_row % w_rows) * w_width + c_col % w_width];
      const acc_t num = keep * a[e] + lam * s[(r % s_rows) * s_width + j % s_width];
      result = den > acc_t(0) ? pv + num / (den > tiny ? den : tiny) : pv;
    } else {
      result = cv > acc_t(0) ? a[e] / (cv > tiny ? cv : tiny) : pv;
    }
    out[e] = from_acc<out_t>(result);
  }
}

}  // namespace fedbrb
