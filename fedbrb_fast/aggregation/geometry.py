"""How the fast aggregation paths see a parameter tensor: a 2-d array [rows, cols * inner].

Only axes 0 and 1 may be sliced (ParamSpec enforces it), so every tensor flattens to `rows`
(axis 0), `cols` (axis 1) and `inner` (the product of the whole trailing axes, e.g. a conv
kernel's 3x3). A client's contiguous run of columns is then a contiguous run of `inner`-sized
blocks in a row, which is what lets the kernels add straight into slices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from ..models.layout import ModelLayout, ParamSpec


@dataclass(frozen=True)
class TensorGeometry:
    """`row_group` / `col_group`: the channel group slicing the rows / columns, or None. A 1-d
    tensor is one row of `cols` elements, so its sliced channels are contiguous in a row too.
    `row_segments` / `col_segments`: the segments R_g of those groups (1 for whole axes)."""

    shape: tuple[int, ...]
    row_group: int | None
    col_group: int | None
    row_segments: int = 1
    col_segments: int = 1

    @classmethod
    def of(cls, spec: ParamSpec, layout: ModelLayout) -> TensorGeometry:
        groups = spec.axis_groups
        row, col = (groups[0], groups[1]) if len(spec.shape) >= 2 else (None, groups[0] if groups else None)
        return cls(spec.shape, row, col, layout.segments(row) if row is not None else 1,
                   layout.segments(col) if col is not None else 1)

    @property
    def sliced_rows(self) -> bool:
        return self.row_group is not None

    @property
    def sliced_cols(self) -> bool:
        return self.col_group is not None

    @property
    def rows(self) -> int:
        return self.shape[0] if len(self.shape) >= 2 else 1

    @property
    def cols(self) -> int:
        return self.shape[1] if len(self.shape) >= 2 else math.prod(self.shape)

    @property
    def inner(self) -> int:
        return math.prod(self.shape[2:])

    @property
    def width(self) -> int:
        return self.cols * self.inner

    def tiles(self, num_blocks: int) -> tuple[int, int]:
        """Tile positions along rows and along the flattened width: K, or R*K on an axis of R
        segments (1 where an axis is whole)."""
        return (num_blocks * self.row_segments if self.sliced_rows else 1,
                num_blocks * self.col_segments if self.sliced_cols else 1)

    def tile_shape(self, num_blocks: int) -> tuple[int, ...]:
        k_rows, k_cols = self.tiles(num_blocks)
        out = list(self.shape)
        if len(out) >= 2:
            out[0] //= k_rows
            out[1] //= k_cols
        elif out:
            out[0] //= k_cols
        return tuple(out)

    def flat(self, tensor: Tensor) -> Tensor:
        """A global-shape tensor as [rows, width] (a view when contiguous)."""
        return tensor.reshape(self.rows, self.width)

    def flat_stack(self, stacked: Tensor) -> Tensor:
        """Stacked client tensors [n, *sub_shape] as [n, k_rows, k_cols * inner]."""
        n, sub = stacked.shape[0], stacked.shape[1:]
        k_rows = sub[0] if len(sub) >= 2 else 1
        return stacked.reshape(n, k_rows, math.prod(sub) // k_rows)
