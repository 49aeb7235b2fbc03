// Host launchers of the fused aggregation kernels (device code in aggregation_device.cuh, shared with
// the NVRTC build of fedbrb_fast/aggregation/backends/cupy_kernels.py): the C interface of
// aggregation_kernels.h, one template instance per supported dtype pair.
#include "aggregation_device.cuh"
#include "aggregation_kernels.h"

namespace {

using fedbrb::apply_kernel;
using fedbrb::half_t;
using fedbrb::scatter_add_kernel;

// cupy_kernels.py launches with the same block size and grid cap.
constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;

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
  if (acc_dtype == FEDBRB_F32 && value_dtype == FEDBRB_F16) return launch(half_t{}, float{});
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
