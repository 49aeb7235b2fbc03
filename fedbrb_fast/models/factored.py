"""Stacked client tensors kept as factors, so aggregation sums them by GEMMs.

The batched engine trains an MLP's input layer in the span of each client's samples
(`training/data_span_linear.py`): client i's trained weight is scale_i * base[u_i] + left_i^T right_i
with base [u, rows, cols] the distinct starting slices, left [n, r, rows] and right [n, r, cols]
(r samples). Aggregation only needs weighted sums, and the clients of a run that share a slice
sum to one tensor, (sum_i w_i scale_i) base[u] + (w left)^T right, a single GEMM over the run's
samples: the per-client weights are never written out. Anything that needs one client's tensor
gets it dense (`[i]`, `dense()`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import overload

import torch
from torch import Tensor

from .slice_runs import slice_runs


@dataclass(frozen=True)
class FactoredStack:
    """n clients' tensors [n, rows, cols], client i's = scale[i] * base[of_client[i]] + left[i]^T @ right[i]."""

    base: Tensor  # [u, rows, cols]
    of_client: Tensor  # [n] int64 into base
    scale: Tensor  # [n]
    left: Tensor  # [n, r, rows]
    right: Tensor  # [n, r, cols]

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.of_client), *self.base.shape[1:]))

    @property
    def dtype(self) -> torch.dtype:
        return self.base.dtype

    @property
    def device(self) -> torch.device:
        return self.base.device

    def __len__(self) -> int:
        return len(self.of_client)

    def dim(self) -> int:
        return 3

    def is_floating_point(self) -> bool:
        return self.base.is_floating_point()

    def detach(self) -> FactoredStack:
        return self

    def to(self, device: torch.device | str) -> FactoredStack:
        return FactoredStack(*(t.to(device) for t in (self.base, self.of_client, self.scale, self.left, self.right)))

    def cpu(self) -> FactoredStack:
        return self.to("cpu")

    @overload
    def __getitem__(self, index: int) -> Tensor: ...

    @overload
    def __getitem__(self, index: Tensor) -> FactoredStack: ...

    def __getitem__(self, index: int | Tensor) -> Tensor | FactoredStack:
        """Client `index`'s tensor (dense), or the clients selected by an index tensor (factored)."""
        if isinstance(index, int):
            return torch.addmm(self.base[self.of_client[index]], self.left[index].t(), self.right[index],
                               beta=float(self.scale[index]))
        return FactoredStack(self.base, self.of_client[index], self.scale[index], self.left[index], self.right[index])

    def dense(self) -> Tensor:
        """Every client's tensor [n, rows, cols]."""
        w = self.base.index_select(0, self.of_client)
        w.mul_(self.scale.to(w.dtype).view(-1, 1, 1))
        return w.baddbmm_(self.left.transpose(1, 2), self.right)

    def non_finite_clients(self) -> Tensor:
        """bool [n] (CPU): clients whose tensor may hold a NaN/Inf (a non-finite factor)."""
        bad = ~torch.isfinite(self.scale) | ~torch.isfinite(self.base.flatten(1)).all(dim=1)[self.of_client]
        for t in (self.left, self.right):
            bad |= ~torch.isfinite(t.flatten(1).sum(1, dtype=torch.float64))
        return bad.cpu()

    def scale_client_(self, i: int, factor: float) -> None:
        """Multiply client i's tensor by `factor` in place."""
        self.scale[i] *= factor
        self.left[i] *= factor

    def poison_client_(self, i: int, value: float) -> None:
        """Make client i's tensor non-finite in place (one factor entry set to `value`)."""
        self.left[i].view(-1)[0] = value

    def run_sums(self, weights: Tensor) -> tuple[list[int], Tensor, Tensor]:
        """Per run of consecutive clients sharing a base slice: the run's first client, the sum of
        its weights [R] and its weighted sum of tensors [R, rows, cols] (one GEMM per run)."""
        bounds = slice_runs(self.of_client)
        starts = [start for start, _ in bounds]
        sums = self.base.new_empty(len(bounds), *self.base.shape[1:])
        for r, (start, stop) in enumerate(bounds):
            ww = weights[start:stop].to(self.base.device)
            members: slice | Tensor = slice(start, stop)  # a view of the run's factors
            if not bool((ww != 0).all()):  # weight-0 clients (excluded ones may hold NaN) stay out entirely
                members, ww = torch.arange(start, stop, device=self.base.device)[ww != 0], ww[ww != 0]
            left = (self.left[members] * ww.to(self.dtype).view(-1, 1, 1)).reshape(-1, self.left.shape[2])
            right = self.right[members].reshape(-1, self.right.shape[2])
            beta = float((ww.to(torch.float64) * self.scale[members].to(torch.float64)).sum())
            torch.addmm(self.base[self.of_client[start]], left.t(), right, beta=beta, out=sums[r])
        run_weights = torch.stack([weights[a:b].sum() for a, b in bounds]) if bounds else weights[:0]
        return starts, run_weights, sums


def as_dense(stacked: Tensor | FactoredStack) -> Tensor:
    """Stacked client tensors as one tensor (a factored stack is built; a tensor is returned as is)."""
    return stacked.dense() if isinstance(stacked, FactoredStack) else stacked
