"""Where stacked clients' local positions along one axis land in the global tensor.

Index sets of FedBRB, FedRolex and HeteroFL are contiguous windows that may wrap around, i.e. at
most two runs of consecutive channels; FD's random sets break into many short runs. Storing every
index set as runs (compressed per client, CSR style) lets the CPU kernels add whole slices where
the channels are consecutive and fall back to short runs elsewhere, with one code path.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor


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
        ptr, triples = self.ptr.tolist(), list(zip(self.start.tolist(), self.local.tolist(), self.length.tolist()))
        return [triples[ptr[i]:ptr[i + 1]] for i in range(len(ptr) - 1)]


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
        index = self.index.cpu()
        starts = torch.ones(n, k, dtype=torch.bool)
        starts[:, 1:] = index[:, 1:] != index[:, :-1] + 1
        client, local = starts.nonzero(as_tuple=True)
        ptr = torch.zeros(n + 1, dtype=torch.int64)
        ptr[1:] = starts.sum(1).cumsum(0)
        ends = torch.empty_like(local)
        ends[:-1] = local[1:]
        ends[ptr[1:] - 1] = k  # a client's last run ends at its last position
        return Runs(ptr, index[client, local], local, ends - local)


def sliced_axis(index: Tensor) -> AxisIndex:
    return AxisIndex(index.to(torch.int64))


def whole_axis(n: int, size: int, device: torch.device | str = "cpu") -> AxisIndex:
    return AxisIndex(torch.arange(size, device=device).expand(n, size), whole=True)
