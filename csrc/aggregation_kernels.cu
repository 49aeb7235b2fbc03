// Fused aggregation kernels in CUDA C++: the same computation as kernels/aggregation_triton.py and
// the plain-torch references in kernels/aggregation.py.
//
// scatter_add: a grid-stride loop over every (client, local row, local element); each thread maps
// its element to the global tensor through the index sets and adds into A with atomics (clients
// overlap). apply: one elementwise pass over the global tensor reading the pooled S, W at the
// element's tile offset.
#include <cuda_fp16.h>

#include "aggregation_kernels.h"

namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;

template <typename acc_t, typename T>
__device__ __forceinline__ acc_t to_acc(T v) { return static_cast<acc_t>(v); }
template <>
__device__ __forceinline__ float to_acc<float, __half>(__half v) { return __half2float(v); }

template <typename out_t, typename acc_t>
__device__ __forceinline__ out_t from_acc(acc_t v) { return static_cast<out_t>(v); }
template <>
__device__ __forceinline__ __half from_acc<__half, float>(float v) { return __float2half(v); }

template <typename data_t, typename acc_t>
__global__ void scatter_add_kernel(acc_t* __restrict__ a, acc_t* __restrict__ c, const data_t* __restrict__ data, const acc_t* __restrict__ mask,
                                   const acc_t* __restrict__ weights, const int64_t* __restrict__ rows,
                                   const int64_t* __restrict__ cols, int64_t total, int64_t k_rows, int64_t k_width,
                                   int64_t inner, int64_t width, int64_t rows_client_stride,
                                   int64_t cols_client_stride, int64_t c_width, int c_rows_reduced) {
  const int64_t per_client = k_rows * k_width;
  const int64_t per_c_col = width / c_width;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t client = e / per_client;
    const acc_t w = weights[client];
    if (w == acc_t(0)) continue;  // weight-0 clients are skipped, finite or not
    const int64_t local = e - client * per_client;
    const int64_t local_r = local / k_width;
    const int64_t local_j = local - local_r * k_width;
    const int64_t r = rows[client * rows_client_stride + local_r];
    const int64_t j = cols[client * cols_client_stride + local_j / inner] * inner + local_j % inner;
    const int64_t dst = r * width + j;
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
                             int64_t numel, int64_t width, int c_many_rows, int64_t c_width, int64_t s_rows,
                             int64_t s_width, int64_t w_rows, int64_t w_width, acc_t lam, acc_t tiny) {
  const int64_t per_c_col = width / c_width;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < numel;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = e / width;
    const int64_t j = e - r * width;
    const int64_t c_row = c_many_rows ? r : 0;
    const int64_t c_col = j / per_c_col;
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

unsigned int blocks_for(int64_t work) {
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(blocks < kMaxBlocks ? (blocks > 0 ? blocks : 1) : kMaxBlocks);
}

template <typename data_t, typename acc_t>
cudaError_t launch_scatter_add(void* a, void* c, const void* data, const void* mask,
                               const void* weights, const int64_t* rows, const int64_t* cols, int64_t n,
                               int64_t k_rows, int64_t k_width, int64_t inner, int64_t width,
                               int64_t rows_client_stride, int64_t cols_client_stride, int64_t c_width,
                               int c_rows_reduced, cudaStream_t stream) {
  const int64_t total = n * k_rows * k_width;
  if (total == 0) return cudaSuccess;
  scatter_add_kernel<data_t, acc_t><<<blocks_for(total), kThreads, 0, stream>>>(
      static_cast<acc_t*>(a), static_cast<acc_t*>(c), static_cast<const data_t*>(data), static_cast<const acc_t*>(mask), static_cast<const acc_t*>(weights), rows,
      cols, total, k_rows, k_width, inner, width, rows_client_stride, cols_client_stride, c_width, c_rows_reduced);
  return cudaGetLastError();
}

template <typename out_t, typename acc_t>
cudaError_t launch_apply(int broadcast, void* out, const void* p, const void* a, const void* c, const void* s,
                         const void* w, int64_t numel, int64_t width, int c_many_rows, int64_t c_width,
                         int64_t s_rows, int64_t s_width, int64_t w_rows, int64_t w_width, double lam,
                         cudaStream_t stream) {
  if (numel == 0) return cudaSuccess;
  const acc_t tiny = sizeof(acc_t) == sizeof(float) ? acc_t(1.17549435e-38f) : acc_t(2.2250738585072014e-308);
  auto* o = static_cast<out_t*>(out);
  auto* pv = static_cast<const out_t*>(p);
  auto* av = static_cast<const acc_t*>(a);
  auto* cv = static_cast<const acc_t*>(c);
  auto* sv = static_cast<const acc_t*>(s);
  auto* wv = static_cast<const acc_t*>(w);
  if (broadcast) {
    apply_kernel<out_t, acc_t, true><<<blocks_for(numel), kThreads, 0, stream>>>(
        o, pv, av, cv, sv, wv, numel, width, c_many_rows, c_width, s_rows, s_width, w_rows, w_width,
        static_cast<acc_t>(lam), tiny);
  } else {
    apply_kernel<out_t, acc_t, false><<<blocks_for(numel), kThreads, 0, stream>>>(
        o, pv, av, cv, sv, wv, numel, width, c_many_rows, c_width, s_rows, s_width, w_rows, w_width,
        static_cast<acc_t>(lam), tiny);
  }
  return cudaGetLastError();
}

// launch(value_t{}, acc_t{}) for each supported pair of a value type (what clients send, or what
// the model holds) and an accumulation type.
template <typename Launch>
cudaError_t dispatch_dtypes(int value_dtype, int acc_dtype, Launch&& launch) {
  if (acc_dtype == FEDBRB_F32 && value_dtype == FEDBRB_F32) return launch(float{}, float{});
  if (acc_dtype == FEDBRB_F32 && value_dtype == FEDBRB_F16) return launch(__half{}, float{});
  if (acc_dtype == FEDBRB_F64 && value_dtype == FEDBRB_F32) return launch(float{}, double{});
  if (acc_dtype == FEDBRB_F64 && value_dtype == FEDBRB_F64) return launch(double{}, double{});
  return cudaErrorInvalidValue;
}

}  // namespace

extern "C" cudaError_t fedbrb_scatter_add(int data_dtype, int acc_dtype, void* a, void* c, const void* data,
                                          const void* mask, const void* weights,
                                          const int64_t* rows, const int64_t* cols, int64_t n, int64_t k_rows,
                                          int64_t k_width, int64_t inner, int64_t width, int64_t rows_client_stride,
                                          int64_t cols_client_stride, int64_t c_width, int c_rows_reduced,
                                          cudaStream_t stream) {
  return dispatch_dtypes(data_dtype, acc_dtype, [&](auto data_tag, auto acc_tag) {
    return launch_scatter_add<decltype(data_tag), decltype(acc_tag)>(
        a, c, data, mask, weights, rows, cols, n, k_rows, k_width, inner, width, rows_client_stride,
        cols_client_stride, c_width, c_rows_reduced, stream);
  });
}

extern "C" cudaError_t fedbrb_apply(int out_dtype, int acc_dtype, int broadcast, void* out, const void* p,
                                    const void* a, const void* c, const void* s, const void* w, int64_t numel,
                                    int64_t width, int c_many_rows, int64_t c_width, int64_t s_rows, int64_t s_width,
                                    int64_t w_rows, int64_t w_width, double lam, cudaStream_t stream) {
  return dispatch_dtypes(out_dtype, acc_dtype, [&](auto out_tag, auto acc_tag) {
    return launch_apply<decltype(out_tag), decltype(acc_tag)>(broadcast, out, p, a, c, s, w, numel, width,
                                                              c_many_rows, c_width, s_rows, s_width, w_rows,
                                                              w_width, lam, stream);
  });
}
