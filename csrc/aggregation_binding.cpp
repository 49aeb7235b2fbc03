// torch extension binding of the fused aggregation kernels: tensor checks, dtype codes and the current
// CUDA stream, then the C launchers of aggregation_kernels.cu. Built by
// torch.utils.cpp_extension.load on machines with a GPU (fedbrb_fast/aggregation/backends/cuda_backend.py);
// same functions and signatures as kernels/aggregation.py.
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include "aggregation_kernels.h"

namespace {

int dtype_code(const torch::Tensor& t) {
  switch (t.scalar_type()) {
    case torch::kHalf: return FEDBRB_F16;
    case torch::kFloat: return FEDBRB_F32;
    case torch::kDouble: return FEDBRB_F64;
    default: TORCH_CHECK(false, "unsupported dtype ", t.scalar_type());
  }
}

void check_cuda(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK(t.stride(-1) == 1, name, " must have unit stride along its last axis");
}

void check_launch(cudaError_t status) { TORCH_CHECK(status == cudaSuccess, cudaGetErrorString(status)); }

const void* optional_ptr(const c10::optional<torch::Tensor>& t) { return t.has_value() ? t->data_ptr() : nullptr; }

void scatter_add(torch::Tensor a, torch::Tensor c, torch::Tensor data, torch::Tensor weights, torch::Tensor rows,
                 torch::Tensor cols, int64_t inner, c10::optional<torch::Tensor> mask) {
  data = data.contiguous();
  const auto acc = a.scalar_type();
  weights = weights.to(acc).contiguous();
  if (mask.has_value()) mask = mask->to(acc).contiguous();
  for (auto* t : {&a, &c, &data, &weights, &rows, &cols}) check_cuda(*t, "every tensor");
  TORCH_CHECK(a.is_contiguous() && c.is_contiguous(), "a and c must be contiguous");
  TORCH_CHECK(c.scalar_type() == acc, "c must have a's dtype");
  TORCH_CHECK(rows.scalar_type() == torch::kLong && cols.scalar_type() == torch::kLong, "index sets must be int64");
  const auto stream = c10::cuda::getCurrentCUDAStream(a.get_device()).stream();
  check_launch(fedbrb_scatter_add(dtype_code(data), dtype_code(a), a.data_ptr(), c.data_ptr(), data.data_ptr(), optional_ptr(mask), weights.data_ptr(), rows.data_ptr<int64_t>(),
                                  cols.data_ptr<int64_t>(), data.size(0), data.size(1), data.size(2), inner, a.size(1),
                                  rows.stride(0), cols.stride(0), c.size(1), c.size(0) == 1 ? 1 : 0, stream));
}

torch::Tensor apply(torch::Tensor p, torch::Tensor a, torch::Tensor c, torch::Tensor s, torch::Tensor w, double lam,
                    bool broadcast) {
  p = p.contiguous();
  c = c.contiguous();
  s = s.contiguous();
  w = w.contiguous();
  for (auto* t : {&p, &a, &c, &s, &w}) check_cuda(*t, "every tensor");
  auto out = torch::empty(a.sizes(), p.options());
  const auto stream = c10::cuda::getCurrentCUDAStream(a.get_device()).stream();
  check_launch(fedbrb_apply(dtype_code(p), dtype_code(a), broadcast ? 1 : 0, out.data_ptr(), p.data_ptr(),
                            a.data_ptr(), c.data_ptr(), s.data_ptr(), w.data_ptr(), a.numel(), a.size(1),
                            c.size(0) > 1 ? 1 : 0, c.size(1), s.size(0), s.size(1), w.size(0), w.size(1), lam, stream));
  return out;
}

torch::Tensor apply_overlap(torch::Tensor p, torch::Tensor a, torch::Tensor c) { return apply(p, a, c, a, c, 0.0, false); }

torch::Tensor apply_broadcast(torch::Tensor p, torch::Tensor a, torch::Tensor c, torch::Tensor s, torch::Tensor w,
                              double lam) {
  return apply(p, a, c, s, w, lam, true);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("scatter_add", &scatter_add, "a += w x, c += w over client slices", py::arg("a"), py::arg("c"),
        py::arg("data"), py::arg("weights"), py::arg("rows"), py::arg("cols"), py::arg("inner"),
        py::arg("mask") = py::none());
  m.def("apply_overlap", &apply_overlap, "A / C where C > 0, else p");
  m.def("apply_broadcast", &apply_broadcast, "weighted broadcast of the pooled sums");
}
