"""Runs of consecutive clients that start from the same slice (the batched engine orders a chunk's
clients by where their channels start, so clients sharing a slice sit side by side)."""

from __future__ import annotations

import torch
from torch import Tensor

# Above this many runs per client, per-run GEMMs cost more in calls than they save in copies.
MAX_RUNS_FRACTION = 0.25


def slice_runs(*keys: Tensor) -> list[tuple[int, int]]:
    """[start, stop) of the runs of consecutive clients on which every key [n] is constant."""
    n = len(keys[0])
    change = torch.zeros(n, dtype=torch.bool)
    for key in keys:
        change[1:] |= (key[1:] != key[:-1]).cpu()
    starts = [0, *torch.nonzero(change).flatten().tolist()] if n else []
    return list(zip(starts, [*starts[1:], n], strict=True))


def few_runs(runs: list[tuple[int, int]], clients: int) -> bool:
    """Few enough runs that one GEMM per run of clients sharing a slice beats per-client copies."""
    return len(runs) <= MAX_RUNS_FRACTION * clients
