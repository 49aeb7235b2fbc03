"""How often each weight element / tile between two channel groups was trained
(docs/algorithm.md#blocks, #extraction)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from .extraction import ClientPlan


def element_coverage(plans: Iterable[ClientPlan], out_group: int, in_group: int, out_size: int, in_size: int) -> Tensor:
    """[out_size, in_size] number of clients that trained each weight element."""
    counts = torch.zeros(out_size, in_size, dtype=torch.int64)
    for p in plans:
        counts[p.indices[out_group].unsqueeze(1), p.indices[in_group].unsqueeze(0)] += 1
    return counts


def tile_coverage(
    plans: Iterable[ClientPlan], out_group: int, in_group: int, out_size: int, in_size: int, num_blocks: int
) -> Tensor:
    """[K, K] number of clients that trained the whole of tile (out block a, in block b)."""
    bo, bi = out_size // num_blocks, in_size // num_blocks
    counts = torch.zeros(num_blocks, num_blocks, dtype=torch.int64)
    for p in plans:
        held = torch.zeros(out_size, in_size, dtype=torch.bool)
        held[p.indices[out_group].unsqueeze(1), p.indices[in_group].unsqueeze(0)] = True
        counts += held.view(num_blocks, bo, num_blocks, bi).all(dim=3).all(dim=1)
    return counts
