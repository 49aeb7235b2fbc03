"""Backend `numba`: CPU-parallel fused kernels (see numba_kernels.py), one pass over the client
data per tensor and one finalize pass.

numba has no float16/bfloat16: client tensors in those dtypes are converted to float32 first.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor

from ...optional import require
from ..rule import AggregationRule
from ..stacks import SliceStack
from ..sums import TensorSums
from . import numba_kernels

numba = require("numba", "the numba aggregation backend")

# Row bands per thread: enough that clients (each covering a few bands) balance across threads.
BANDS_PER_THREAD = 8

# Below this many bytes of work a kernel runs on the calling thread: waking the pool costs more
# than the work, and much more when another process competes for the cores.
PARALLEL_MIN_BYTES = 1 << 18


class NumbaBackend:
    name = "numba"

    def scatter_add(self, sums: TensorSums, stack: SliceStack, weights: Tensor) -> None:
        a = sums.a.numpy()
        floats = stack.data if stack.data.dtype in (torch.float32, torch.float64) else stack.data.float()
        data = floats.contiguous().numpy()
        no_mask = np.zeros((1, 1, 1), a.dtype)
        mask = stack.mask.to(sums.a.dtype).contiguous().numpy() if stack.mask is not None else no_mask
        rows, cols = stack.rows.runs, stack.cols.runs
        with _threads_for(data.nbytes):
            numba_kernels.scatter_add(
                a, sums.c.numpy(), data, mask,
                stack.mask is not None, weights.numpy(), rows.ptr.numpy(), rows.start.numpy(), rows.local.numpy(),
                rows.length.numpy(), cols.ptr.numpy(), cols.start.numpy(), cols.local.numpy(), cols.length.numpy(),
                sums.geometry.inner, min(a.shape[0], BANDS_PER_THREAD * numba.get_num_threads()))

    def all_finite(self, a: Tensor) -> bool:
        with _threads_for(a.numel() * a.element_size()):
            return numba_kernels.count_non_finite(a.numpy()) == 0

    def finalize(self, p: Tensor, sums: TensorSums, rule: AggregationRule) -> Tensor:
        a, c = sums.a, sums.c
        per_c_col = a.shape[1] // c.shape[1]
        if 1 < per_c_col < a.shape[1]:  # C per column of a tensor with trailing axes (conv kernels):
            c = c.repeat_interleave(per_c_col, dim=1)  # one value per element keeps the loops vectorized
        dtype = p.dtype if p.dtype in (torch.float32, torch.float64) else a.dtype
        out, p = torch.empty(a.shape, dtype=dtype), p.to(dtype).contiguous()
        scalar = a.numpy().dtype.type
        tiny = scalar(torch.finfo(a.dtype).tiny)
        with _threads_for(a.numel() * a.element_size()):
            if rule.kind == "overlap":
                numba_kernels.apply_overlap(out.numpy(), p.numpy(), a.numpy(), c.numpy(), tiny)
            else:
                k_rows, k_cols = sums.geometry.tiles(rule.num_blocks)
                s = torch.empty(a.shape[0] // k_rows, a.shape[1] // k_cols, dtype=a.dtype)
                w = torch.empty(c.shape[0] // k_rows, c.shape[1] // k_cols, dtype=c.dtype)
                numba_kernels.tile_sum(c.numpy(), w.numpy())
                numba_kernels.finalize_broadcast(out.numpy(), p.numpy(), a.numpy(), c.numpy(), s.numpy(), w.numpy(),
                                                 scalar(1 - rule.lam), scalar(rule.lam), tiny)
        return out


@contextmanager
def _threads_for(nbytes: int) -> Iterator[None]:
    """Kernels run on torch's thread count (one thread below PARALLEL_MIN_BYTES). numba and torch
    share one OpenMP runtime, so setting numba's count sets torch's: torch's is restored after."""
    torch_threads, saved = torch.get_num_threads(), numba.get_num_threads()
    numba.set_num_threads(1 if nbytes < PARALLEL_MIN_BYTES else min(torch_threads, saved))
    try:
        yield
    finally:
        numba.set_num_threads(saved)
        torch.set_num_threads(torch_threads)
