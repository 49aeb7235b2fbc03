"""What every aggregation backend implements: the per-tensor scatter-add and finalize passes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from torch import Tensor

from ..rule import AggregationRule
from ..stacks import SliceStack
from ..sums import TensorSums

ApplyOverlap = Callable[[Tensor, Tensor, Tensor], Tensor]
ApplyBroadcast = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, float], Tensor]


class Backend(Protocol):
    name: str

    def scatter_add(self, sums: TensorSums, stack: SliceStack, weights: Tensor) -> None:
        """Add the stack's clients into `sums`: A += w x, C += w, both times the mask. `weights`
        [n] is in the accumulation dtype on the sums' device.

        Clients of weight 0 are skipped: they leave `sums` exactly unchanged even where their
        values are not finite. Other non-finite values may reach A (the caller checks A)."""
        ...

    def all_finite(self, a: Tensor) -> bool:
        ...

    def finalize(self, p: Tensor, sums: TensorSums, rule: AggregationRule) -> Tensor:
        """The new [rows, width] values of a tensor whose global values are p [rows, width]."""
        ...


def finalize_stepwise(p: Tensor, sums: TensorSums, rule: AggregationRule, apply_overlap: ApplyOverlap,
                      apply_broadcast: ApplyBroadcast) -> Tensor:
    """Finalize through the apply kernels of kernels/aggregation*.py (signatures of the references):
    the sums of deltas and their pool (S, W) are formed with torch ops first."""
    if rule.kind == "overlap":
        return apply_overlap(p, sums.a, sums.c)
    deltas = sums.deltas(p)
    s, w = deltas.pool(rule.num_blocks)
    return apply_broadcast(p, deltas.a, deltas.c, s, w, rule.lam)
