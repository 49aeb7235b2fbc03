"""The problem table of a grouped block-sliced GEMM: which rows, sizes and weight window each
problem (one client's linear layer) uses.

Problem `g` computes `Y[rows_g, :N_g] = X[rows_g, :K_g] @ W_gᵀ + b_g` where `rows_g` are the
`M_g` rows from `ROW`, and `W_g` is the wrap-around window of source matrix `W_src[SOURCE]`
(`[R, C]`): slice row `r` is source row `(ROW_START + r) % R`, slice column `c` is source column
`(COL_START + c) % C`. The bias slice is `b_src[SOURCE]` on the same rows.

Table: int32 `[G, 7]`, one row per problem, columns named below. X, Y, dX and dY share the row
layout (the packed client batches of one layer), so one `ROW` column serves all four; the row
ranges of problems with rows are disjoint. Rows no problem covers get Y = 0 and dX = 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import Tensor

ROW, M, N, K, SOURCE, ROW_START, COL_START = range(7)
FIELDS = COL_START + 1

# Tile grids of the three kernels: (axis of the first tile index, axis of the second).
TILE_AXES = {"forward": (M, N), "grad_input": (M, K), "grad_weight": (N, K)}

IntsLike = int | Sequence[int] | Tensor


@dataclass(frozen=True, eq=False)
class GroupedProblems:
    """A validated problem table (host copy in `table`) plus per-device caches of it and of the
    tile maps the kernels read, so a training loop builds them once per round."""

    table: Tensor
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        t = self.table
        if t.dtype != torch.int32 or t.dim() != 2 or t.shape[1] != FIELDS or t.device.type != "cpu":
            raise ValueError(f"problem table must be a CPU int32 tensor [G, {FIELDS}], got {t.dtype} {tuple(t.shape)} "
                             f"on {t.device}")
        if (t < 0).any():
            raise ValueError("problem table entries must be non-negative")
        active = t[t[:, M] > 0].to(torch.int64)
        starts, order = active[:, ROW].sort()
        if (starts[1:] < (starts + active[order, M])[:-1]).any():
            raise ValueError("problems' row ranges overlap: each row of X and Y belongs to at most one problem")

    @classmethod
    def build(cls, rows: IntsLike, out_features: IntsLike, in_features: IntsLike, *, source: IntsLike | None = None,
              row_start: IntsLike = 0, col_start: IntsLike = 0, row_offset: IntsLike | None = None) -> GroupedProblems:
        """One problem per entry of `rows` (M_g); scalars broadcast. By default problem g reads
        source matrix g and the problems' rows are packed back to back from row 0."""
        m = torch.as_tensor(rows, dtype=torch.int64).reshape(-1)
        g = m.numel()

        def column(values: IntsLike) -> Tensor:
            return torch.as_tensor(values, dtype=torch.int64).reshape(-1).expand(g)

        offsets = torch.cumsum(m, 0) - m if row_offset is None else column(row_offset)
        sources = torch.arange(g) if source is None else column(source)
        table = torch.stack([offsets, m, column(out_features), column(in_features), sources, column(row_start),
                             column(col_start)], dim=1)
        if table.numel() and table.max() > torch.iinfo(torch.int32).max:
            raise ValueError("problem table entries must fit in int32")
        return cls(table.to(torch.int32).contiguous())

    @property
    def num_problems(self) -> int:
        return self.table.shape[0]

    @cached_property
    def max_sizes(self) -> tuple[int, int, int]:
        """The largest (M, N, K) over the problems (zeros without problems)."""
        if not self.num_problems:
            return 0, 0, 0
        m, n, k = self.table[:, [M, N, K]].max(0).values.tolist()
        return m, n, k

    @property
    def max_out_features(self) -> int:
        return self.max_sizes[1]

    @cached_property
    def shares_sources(self) -> bool:
        """Whether two problems that write gradients slice the same source matrix, so their dW
        and db may overlap and must be accumulated atomically."""
        active = self.table[(self.table[:, M] > 0) & (self.table[:, N] > 0), SOURCE]
        return active.unique().numel() < active.numel()

    def check(self, x: Tensor, weight_shape: torch.Size, bias_shape: torch.Size | None) -> None:
        """Raise ValueError unless every problem fits `x` [rows, cols], a stacked weight source
        [S, R, C] and a bias source [S, R] (or no bias). Remembers the shapes it accepted, so a
        training loop pays for the check once."""
        key = ("checked", tuple(x.shape), tuple(weight_shape), None if bias_shape is None else tuple(bias_shape))
        if key in self._cache:
            return
        if x.dim() != 2:
            raise ValueError(f"x must be 2-d [rows, features], got shape {tuple(x.shape)}")
        if len(weight_shape) != 3:
            raise ValueError(f"weight source must be [S, R, C], got {tuple(weight_shape)}")
        s, r, c = weight_shape
        if r < 1 or c < 1:
            raise ValueError(f"weight source matrices must be non-empty, got {tuple(weight_shape)}")
        if bias_shape is not None and tuple(bias_shape) != (s, r):
            raise ValueError(f"bias source must be [S, R] = {(s, r)}, got {tuple(bias_shape)}")
        t = self.table.to(torch.int64)
        failures = {
            "rows beyond x": t[:, ROW] + t[:, M] > x.shape[0],
            "in_features beyond x's columns": t[:, K] > x.shape[1],
            "source index out of range": t[:, SOURCE] >= s,
            "window taller than the source (N > R)": t[:, N] > r,
            "window wider than the source (K > C)": t[:, K] > c,
            "row_start outside the source (>= R)": t[:, ROW_START] >= r,
            "col_start outside the source (>= C)": t[:, COL_START] >= c,
        }
        for reason, bad in failures.items():
            if bad.any():
                raise ValueError(f"problems {bad.nonzero().flatten().tolist()[:8]}: {reason}")
        self._cache[key] = True

    def device_table(self, device: torch.device) -> Tensor:
        key = ("table", str(device))
        if key not in self._cache:
            self._cache[key] = self.table.to(device)
        return self._cache[key]

    def tile_map(self, kernel: str, block_a: int, block_b: int, device: torch.device) -> Tensor:
        """int32 [T, 3]: (problem, tile index along the kernel's first axis, along its second)
        for every output tile of every problem, problem by problem. The weight-gradient kernel
        keeps one tile along K even when K = 0 (it still owns db) and none when M = 0."""
        key = (kernel, block_a, block_b, str(device))
        if key not in self._cache:
            axis_a, axis_b = TILE_AXES[kernel]
            t = self.table.to(torch.int64)
            tiles_a = _cdiv(t[:, axis_a], block_a)
            tiles_b = _cdiv(t[:, axis_b], block_b)
            if kernel == "grad_weight":
                tiles_b = torch.where(t[:, M] > 0, tiles_b.clamp_min(1), 0)
            self._cache[key] = _enumerate_tiles(tiles_a, tiles_b).to(device)
        return self._cache[key]


def _cdiv(a: Tensor, b: int) -> Tensor:
    return (a + b - 1) // b


def _enumerate_tiles(tiles_a: Tensor, tiles_b: Tensor) -> Tensor:
    per_problem = tiles_a * tiles_b
    problem = torch.repeat_interleave(torch.arange(per_problem.numel()), per_problem)
    first_tile = torch.cumsum(per_problem, 0) - per_problem
    local = torch.arange(problem.numel()) - first_tile[problem]
    width = tiles_b[problem]
    return torch.stack([problem, local // width, local % width], dim=1).to(torch.int32).contiguous()
