"""Backend `torch`: slice-wise in-place accumulation, on any device torch supports.

For each client, every (row run, column run) pair of its index sets is a contiguous slice of the
global tensor and of the client tensor, added with one in-place `add_` (copy speed; a flattened
index_add_ moves 4-8x more bytes). Index sets that break into many runs (FD's random channels) go
through one accumulating `index_put_` per client instead of thousands of tiny slices.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...kernels.aggregation import apply_broadcast_reference, apply_overlap_reference
from ..rule import AggregationRule
from ..stacks import SliceStack
from ..sums import TensorSums
from .base import finalize_stepwise

# Above this many slices per client, one index_put_ beats a Python loop of slice adds.
MAX_SLICES_PER_CLIENT = 4


class TorchBackend:
    name = "torch"

    def scatter_add(self, sums: TensorSums, stack: SliceStack, weights: Tensor) -> None:
        row_runs, col_runs = stack.rows.runs.per_client(), stack.cols.runs.per_client()
        for i, w in enumerate(weights.tolist()):
            if w == 0:  # adds nothing (and 0 * NaN must not reach the sums)
                continue
            value = stack.data[i].to(sums.a.dtype)
            mask = stack.mask[i].to(sums.a.dtype) if stack.mask is not None else None
            if len(row_runs[i]) * len(col_runs[i]) > MAX_SLICES_PER_CLIENT:
                _add_indexed(sums, value, stack.rows.index[i], stack.cols.index[i], w, mask)
            else:
                for rows in row_runs[i]:
                    for cols in col_runs[i]:
                        _add_slice(sums, value, rows, cols, w, mask)

    def all_finite(self, a: Tensor) -> bool:
        return bool(torch.isfinite(a).all())

    def finalize(self, p: Tensor, sums: TensorSums, rule: AggregationRule) -> Tensor:
        return finalize_stepwise(p, sums, rule, apply_overlap_reference, apply_broadcast_reference)


def _add_slice(sums: TensorSums, value: Tensor, rows: tuple[int, int, int], cols: tuple[int, int, int], w: float,
               mask: Tensor | None) -> None:
    inner = sums.geometry.inner
    (r0, lr, nr), (c0, lc, nc) = rows, cols
    target = (slice(r0, r0 + nr), slice(c0 * inner, (c0 + nc) * inner))
    source = (slice(lr, lr + nr), slice(lc * inner, (lc + nc) * inner))
    x = value[source]
    if mask is not None:
        sums.a[target].addcmul_(mask[source], x, value=w)
        sums.c[target].add_(mask[source], alpha=w)
        return
    sums.a[target].add_(x, alpha=w)
    c_rows, c_width = sums.c.shape
    c_row = target[0] if c_rows > 1 else slice(0, 1)  # a reduced axis counts each client once
    c_col = slice(0, 1) if c_width == 1 else target[1] if c_width == sums.a.shape[1] else slice(c0, c0 + nc)
    sums.c[c_row, c_col] += w


def _add_indexed(sums: TensorSums, value: Tensor, rows: Tensor, cols: Tensor, w: float, mask: Tensor | None) -> None:
    inner = sums.geometry.inner
    flat_cols = (cols.unsqueeze(1) * inner + torch.arange(inner, device=cols.device)).flatten()
    r, j = rows.unsqueeze(1), flat_cols.unsqueeze(0)
    x = value
    if mask is not None:
        sums.a.index_put_((r, j), w * mask * x, accumulate=True)
        sums.c.index_put_((r, j), w * mask, accumulate=True)
        return
    sums.a.index_put_((r, j), w * x, accumulate=True)
    c_rows, c_width = sums.c.shape
    whole = torch.zeros((1, 1), dtype=torch.int64, device=rows.device)  # a reduced axis counts each client once
    c_r = r if c_rows > 1 else whole
    c_j = whole if c_width == 1 else j if c_width == sums.a.shape[1] else cols.unsqueeze(0)
    ones = torch.full((c_r.shape[0], c_j.shape[1]), w, dtype=sums.c.dtype, device=sums.c.device)
    sums.c.index_put_((c_r, c_j), ones, accumulate=True)
