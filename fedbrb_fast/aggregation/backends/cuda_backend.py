"""Backend `cuda`: the CUDA C++ kernels of csrc/ (shipped as fedbrb_fast.csrc), compiled on first
use with torch.utils.cpp_extension.load; needs a GPU, nvcc and a host compiler. Backend `cupy` runs
the same kernels compiled by NVRTC (cupy_kernels.py)."""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from ..rule import AggregationRule
from ..stacks import SliceStack
from ..sums import TensorSums
from .base import finalize_stepwise

SOURCES = ("aggregation_binding.cpp", "aggregation_kernels.cu")


@cache
def extension() -> ModuleType:
    from torch.utils.cpp_extension import load  # imported here: it is slow and only GPU machines need it

    csrc = files("fedbrb_fast.csrc")
    return load(name="fedbrb_aggregation_cuda", sources=[str(csrc / s) for s in SOURCES],
                extra_include_paths=[str(csrc)], extra_cuda_cflags=["-O3"])


class CudaBackend:
    """`kernels`: what provides scatter_add / apply_overlap / apply_broadcast (the torch extension
    by default, or cupy_kernels.NvrtcKernels under the name "cupy")."""

    def __init__(self, kernels: Any = None, name: str = "cuda") -> None:
        self.name = name
        self._ext = kernels if kernels is not None else extension()

    def scatter_add(self, sums: TensorSums, stack: SliceStack, weights: Tensor) -> None:
        self._ext.scatter_add(sums.a, sums.c, stack.data, weights, stack.rows.index, stack.cols.index,
                              sums.geometry.inner, stack.mask)

    def all_finite(self, a: Tensor) -> bool:
        return bool(torch.isfinite(a).all())

    def finalize(self, p: Tensor, sums: TensorSums, rule: AggregationRule) -> Tensor:
        return finalize_stepwise(p, sums, rule, self._ext.apply_overlap, self._ext.apply_broadcast)
