"""Backend `triton`: the fused Triton kernels of fedbrb_fast.kernels.aggregation_triton on CUDA
tensors (or on CPU tensors under TRITON_INTERPRET=1, which is how the tests run them)."""

from __future__ import annotations

import torch
from torch import Tensor

from ...kernels import aggregation_triton
from ..rule import AggregationRule
from ..stacks import SliceStack
from ..sums import TensorSums
from .base import finalize_stepwise


class TritonBackend:
    name = "triton"

    def scatter_add(self, sums: TensorSums, stack: SliceStack, weights: Tensor) -> None:
        aggregation_triton.scatter_add(sums.a, sums.c, stack.data, weights, stack.rows.index, stack.cols.index,
                                       sums.geometry.inner, stack.mask)

    def all_finite(self, a: Tensor) -> bool:
        return bool(torch.isfinite(a).all())

    def finalize(self, p: Tensor, sums: TensorSums, rule: AggregationRule) -> Tensor:
        return finalize_stepwise(p, sums, rule, aggregation_triton.apply_overlap, aggregation_triton.apply_broadcast)
