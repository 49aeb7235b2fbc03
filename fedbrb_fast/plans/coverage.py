"""How often each weight element / tile was trained: between two channel groups, or over every tensor of
a layout (docs/algorithm.md#blocks, #extraction)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..models.layout import ModelLayout
from .extraction import ClientPlan
from .shear import diagonal_only_tensors


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


@dataclass(frozen=True)
class LayoutCoverage:
    """How many plans trained each whole tile of every tensor of a layout (docs/algorithm.md#shear)."""

    tiles: dict[str, Tensor]  # per tensor, over its sliced axes in order: [] (none sliced), [K] or [K, K]
    diagonal_only: dict[str, int]  # tensors sliced on both axes by one group, with that group

    def notes(self) -> list[str]:
        """One line per diagonal-only tensor and per tensor with tiles that no plan trained whole."""
        lines = [f"{name}: diagonal-only, sliced on both axes by channel group {g}: a client trains only tiles whose "
                 "two blocks both lie in its one window of that group (at width beta_min the K diagonal tiles)"
                 for name, g in self.diagonal_only.items()]
        for name, counts in self.tiles.items():
            if missed := int((counts == 0).sum()):
                lines.append(f"{name}: {missed} of {counts.numel()} tiles never trained whole")
        return lines


def layout_coverage(plans: Iterable[ClientPlan], layout: ModelLayout, num_blocks: int) -> LayoutCoverage:
    """Tile coverage of every tensor of `layout`: a tile counts for a plan when the plan holds all of
    its channels on every sliced axis."""
    k = num_blocks
    tiles = {s.name: torch.zeros((k,) * len(s.sliced_axes), dtype=torch.int64) for s in layout.params}
    for p in plans:
        whole = []
        for g, n in enumerate(layout.group_sizes):
            held = torch.zeros(n, dtype=torch.bool)
            held[p.indices[g]] = True
            whole.append(held.view(k, n // k).all(dim=1).long())
        for spec in layout.params:
            axes = spec.sliced_axes
            if not axes:
                tiles[spec.name] += 1
            elif len(axes) == 1:
                tiles[spec.name] += whole[axes[0][1]]
            else:
                tiles[spec.name] += torch.outer(whole[axes[0][1]], whole[axes[1][1]])
    return LayoutCoverage(tiles, diagonal_only_tensors(layout))
