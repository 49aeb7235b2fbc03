"""The additive sums of docs/algorithm.md#aggregation for one tensor: accumulated as A and C, pooled into S and W.

A (global shape) is accumulated as the sum of w_i * theta_i under both rules: every client covering
an element was given the same global value p there, so the spec's sum of w_i * delta_i is
A - C * p, taken once when the sums are read or finalized. The kernels then never read the global
tensor while streaming client data (a third stream that cost a third of their speed). C sums the
weights w_i * mask over the same elements. C only varies along sliced axes unless a mask makes it
vary elementwise, so it is kept reduced: [1 or rows, 1 or cols or width] (a reduced axis holds one
value for the whole axis). That saves a read-modify-write per element on the largest tensors.

S and W are the sums over every client tile that lands on a tile offset. Every element of A at
offset o is a sum over the client tiles covering it, so S = the sum of A over tile positions and
W likewise of C: the broadcast pool is computed from A and C once, not accumulated per client.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import AggregationError
from .geometry import TensorGeometry


def expand_reduced(reduced: Tensor, shape: tuple[int, int] | torch.Size) -> Tensor:
    """A reduced [1 or rows, 1 or cols or width] array as [rows, width]: one C column stands for
    `width / c_width` consecutive elements."""
    rows, width = shape
    per_col = width // reduced.shape[1]
    cols = reduced.repeat_interleave(per_col, dim=1) if 1 < per_col < width else reduced
    return cols.expand(rows, width)


@dataclass(frozen=True)
class PartialSums:
    """One tensor's partial sums in the spec's shapes: `a`, `c` global-shaped, `s`, `w`
    tile-shaped (None under the overlap rule). Sums from disjoint sets of clients add."""

    a: Tensor
    c: Tensor
    s: Tensor | None = None
    w: Tensor | None = None

    def __add__(self, other: PartialSums) -> PartialSums:
        a, c = self.a + other.a, self.c + other.c
        if self.s is None and other.s is None:
            return PartialSums(a, c)
        if self.s is None or self.w is None or other.s is None or other.w is None:
            raise AggregationError("partial sums with S and W (broadcast rule) only add to partial sums with both")
        return PartialSums(a, c, self.s + other.s, self.w + other.w)


class TensorSums:
    """A [rows, width] and the reduced C of one tensor, in the accumulation dtype."""

    def __init__(self, geometry: TensorGeometry, a: Tensor, c: Tensor) -> None:
        self.geometry, self.a, self.c = geometry, a, c

    @classmethod
    def zeros(cls, geometry: TensorGeometry, dtype: torch.dtype, device: torch.device) -> TensorSums:
        c_rows = geometry.rows if geometry.sliced_rows else 1
        c_width = geometry.cols if geometry.sliced_cols else 1
        return cls(geometry, torch.zeros(geometry.rows, geometry.width, dtype=dtype, device=device),
                   torch.zeros(c_rows, c_width, dtype=dtype, device=device))

    @classmethod
    def from_partial(cls, geometry: TensorGeometry, sums: PartialSums, dtype: torch.dtype,
                     p: Tensor | None) -> TensorSums:
        """From the spec's sums; `p` ([rows, width] global values) turns sums of deltas back into sums of thetas."""
        c = geometry.flat(sums.c).to(dtype).contiguous()
        a = geometry.flat(sums.a).to(dtype)
        return cls(geometry, (a + c * p.to(dtype) if p is not None else a).contiguous(), c)

    def deltas(self, p: Tensor) -> TensorSums:
        """The sums of w * (theta - p): A - C * p, with p the [rows, width] global values."""
        rows, width = self.a.shape
        c_rows, c_width = self.c.shape
        per_col = width // c_width
        a = torch.addcmul(self.a.view(rows, c_width, per_col), self.c.view(c_rows, c_width, 1),
                          p.to(self.a.dtype).reshape(rows, c_width, per_col), value=-1)
        return TensorSums(self.geometry, a.view(rows, width), self.c)

    def weigh_elementwise(self) -> None:
        """Give C a value per element (a mask makes weights vary along any axis)."""
        if self.c.shape != self.a.shape:
            self.c = self.expanded_c().contiguous()

    def expanded_c(self) -> Tensor:
        return expand_reduced(self.c, self.a.shape)

    def zero_(self) -> None:
        self.a.zero_()
        self.c.zero_()

    def add_(self, other: TensorSums) -> None:
        if self.c.shape != other.c.shape:
            self.weigh_elementwise()
        self.a += other.a
        self.c += other.c if other.c.shape == self.c.shape else other.expanded_c()

    def pool(self, num_blocks: int) -> tuple[Tensor, Tensor]:
        """S = sum of A over tile positions [rows/T_r, width/T_c] (T = K per sliced axis, R*K on an axis
        of R segments: geometry.tiles); W = the same of C, in C's reduced shape."""
        k_rows, k_cols = self.geometry.tiles(num_blocks)
        return _tile_sum(self.a, k_rows, k_cols), _tile_sum(self.c, k_rows, k_cols)

    def partial(self, num_blocks: int | None, p: Tensor | None) -> PartialSums:
        """The spec's sums in the spec's shapes: of deltas relative to `p` and pooled (S, W) under
        the broadcast rule (`num_blocks` and p given), of thetas under overlap averaging."""
        geo = self.geometry
        if num_blocks is None or p is None:
            return PartialSums(self.a.reshape(geo.shape).clone(), self.expanded_c().reshape(geo.shape).clone())
        deltas = self.deltas(p)
        a, c = deltas.a.reshape(geo.shape), self.expanded_c().reshape(geo.shape)
        s, w = deltas.pool(num_blocks)
        tile = geo.tile_shape(num_blocks)
        return PartialSums(a.clone(), c.clone(), s.reshape(tile), expand_reduced(w, s.shape).reshape(tile))


def _tile_sum(x: Tensor, k_rows: int, k_cols: int) -> Tensor:
    rows, width = x.shape
    return x.view(k_rows, rows // k_rows, k_cols, width // k_cols).sum(dim=(0, 2))
