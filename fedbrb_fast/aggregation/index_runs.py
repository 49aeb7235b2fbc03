"""Where stacked clients' local positions along one axis land in the global tensor.

Index sets of FedBRB, FedRolex and HeteroFL are contiguous windows that may wrap around, i.e. at
most two runs of consecutive channels; FD's random sets break into many short runs. Storing every
index set as runs (compressed per client, CSR style) lets the CPU kernels add whole slices where
the channels are consecutive and fall back to short runs elsewhere, with one code path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, cached_property

import numpy as np
import torch
from torch import Tensor

from ..optional import import_if_available

RunArrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # (ptr, start, local, length)


@dataclass(frozen=True)
class Runs:
    """Client i's runs are entries ptr[i]:ptr[i+1]: `length` local positions from `local`
    map to the consecutive global positions from `start`."""

    ptr: Tensor  # [n + 1] int64
    start: Tensor  # [R] int64
    local: Tensor  # [R] int64
    length: Tensor  # [R] int64

    def per_client(self) -> list[list[tuple[int, int, int]]]:
        """(start, local, length) triples per client, as Python ints (for slice-wise loops)."""
        ptr, triples = (
            self.ptr.tolist(),
            list(zip(self.start.tolist(), self.local.tolist(), self.length.tolist(), strict=True)),
        )
        return [triples[ptr[i] : ptr[i + 1]] for i in range(len(ptr) - 1)]


@dataclass(frozen=True)
class AxisIndex:
    """`index[i, l]`: global position of client i's local position l (int64, [n, k]); rows of a
    whole axis are a stride-0 expanded arange."""

    index: Tensor
    whole: bool = False

    @cached_property
    def runs(self) -> Runs:
        n, k = self.index.shape
        if self.whole:
            zeros = torch.zeros(n, dtype=torch.int64)
            return Runs(torch.arange(n + 1), zeros, zeros, torch.full((n,), k, dtype=torch.int64))
        return Runs(*map(torch.from_numpy, runs_kernel()(self.index.cpu().contiguous().numpy())))


def sliced_axis(index: Tensor) -> AxisIndex:
    return AxisIndex(index.to(torch.int64))


def whole_axis(n: int, size: int, device: torch.device | str = "cpu") -> AxisIndex:
    return AxisIndex(torch.arange(size, device=device).expand(n, size), whole=True)


@cache
def runs_kernel() -> Callable[[np.ndarray], RunArrays]:
    """`_runs_of_loops` compiled by numba (5-10x faster than the array version), or
    `runs_of_arrays` without the 'numba' extra."""
    numba = import_if_available("numba")
    return runs_of_arrays if numba is None else numba.njit(cache=True)(_runs_of_loops)


def runs_of_arrays(index: np.ndarray) -> RunArrays:
    """(ptr, start, local, length) of the runs of consecutive values in each row of index [n, k]."""
    n, k = index.shape
    first = np.ones((n, k), dtype=bool)  # positions that start a run
    first[:, 1:] = index[:, 1:] != index[:, :-1] + 1
    ptr = np.zeros(n + 1, np.int64)
    np.cumsum(first.sum(axis=1), out=ptr[1:])
    rows, local = np.nonzero(first)  # row-major: client 0's runs first, in order
    stop = np.append(local[1:], k)
    if k:  # then every client has runs, and its last one ends at k
        stop[ptr[1:] - 1] = k
    return ptr, index[rows, local].astype(np.int64), local.astype(np.int64), (stop - local).astype(np.int64)


def _runs_of_loops(index: np.ndarray) -> RunArrays:
    """`runs_of_arrays` as loops for numba."""
    n, k = index.shape
    ptr = np.zeros(n + 1, np.int64)
    for i in range(n):
        breaks = 0
        for pos in range(1, k):
            breaks += index[i, pos] != index[i, pos - 1] + 1
        ptr[i + 1] = ptr[i] + 1 + breaks
    start, local, length = np.empty(ptr[n], np.int64), np.empty(ptr[n], np.int64), np.empty(ptr[n], np.int64)
    for i in range(n):
        run = ptr[i]
        start[run], local[run] = index[i, 0], 0
        for pos in range(1, k):
            if index[i, pos] != index[i, pos - 1] + 1:
                length[run] = pos - local[run]
                run += 1
                start[run], local[run] = index[i, pos], pos
        length[run] = k - local[run]
    return ptr, start, local, length
