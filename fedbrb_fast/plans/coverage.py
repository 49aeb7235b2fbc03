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
    plans: Iterable[ClientPlan], out_group: int, in_group: int, out_size: int, in_size: int, num_blocks: int,
    segments: tuple[int, int] = (1, 1),
) -> Tensor:
    """[R_out*K, R_in*K] number of clients that trained the whole of tile (out position a, in position b);
    `segments`: (R_out, R_in), the segments of the two groups (a position is a (segment, block) pair,
    docs/algorithm.md#segments)."""
    t_out, t_in = segments[0] * num_blocks, segments[1] * num_blocks
    counts = torch.zeros(t_out, t_in, dtype=torch.int64)
    for p in plans:
        held = torch.zeros(out_size, in_size, dtype=torch.bool)
        held[p.indices[out_group].unsqueeze(1), p.indices[in_group].unsqueeze(0)] = True
        counts += held.view(t_out, out_size // t_out, t_in, in_size // t_in).all(dim=3).all(dim=1)
    return counts


@dataclass(frozen=True)
class LayoutCoverage:
    """How many plans trained each whole tile of every tensor of a layout (docs/algorithm.md#shear)."""

    tiles: dict[str, Tensor]  # per tensor, over its sliced axes in order: [], [R*K] or [R*K, R'*K] (R: segments)
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
    its channels on every sliced axis. An axis of a group of R_g segments has R_g * K tile positions
    (segment, block) of B_g = d_g / K channels."""
    k = num_blocks
    positions = [layout.segments(g) * k for g in range(len(layout.group_sizes))]
    tiles = {s.name: torch.zeros(tuple(positions[g] for _, g in s.sliced_axes), dtype=torch.int64)
             for s in layout.params}
    for p in plans:
        whole = []
        for g, n in enumerate(layout.group_sizes):
            held = torch.zeros(n, dtype=torch.bool)
            held[p.indices[g]] = True
            whole.append(held.view(positions[g], n // positions[g]).all(dim=1).long())
        for spec in layout.params:
            axes = spec.sliced_axes
            if not axes:
                tiles[spec.name] += 1
            elif len(axes) == 1:
                tiles[spec.name] += whole[axes[0][1]]
            else:
                tiles[spec.name] += torch.outer(whole[axes[0][1]], whole[axes[1][1]])
    return LayoutCoverage(tiles, diagonal_only_tensors(layout))
