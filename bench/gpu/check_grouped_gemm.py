"""Check `grouped_gemm`: the Triton grouped GEMM (forward, dX, dW + db) against its torch
reference on fresh random problem sets — ragged (empty rows, prime sizes, windows that wrap),
one shared source (overlapping windows, atomic dW) and empty problems (M, N or K = 0) — in
fp32 (ieee and tf32 dots), fp16 and bf16 (GPU only: the interpreter breaks bf16).

Each pass is launched on its own into NaN-filled outputs (the weight gradients too, where no
two problems share a source): every element the reference defines must be written, and nothing
else. Then the autograd function is checked end to end by bench_grouped_gemm.check_kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from bench_grouped_gemm import CHECK_TOLERANCE, LayerCase, check_kernel
from harness import Context, Recorder, poisoned, relative_error
from torch import Tensor

from fedbrb_fast.kernels.grouped_gemm import GroupedProblems, TileConfig, grouped_linear_reference
from fedbrb_fast.kernels.grouped_gemm_launch import (
    default_tiles,
    forward_launch,
    grad_input_launch,
    grad_weight_launch,
)
from fedbrb_fast.kernels.grouped_gemm_reference import wrapped_window

DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclass(frozen=True)
class ProblemSet:
    name: str
    problems: GroupedProblems
    x_shape: tuple[int, int]
    w_shape: tuple[int, int, int]


def problem_sets(g: torch.Generator, big: bool) -> list[ProblemSet]:
    """Fresh random problem sets; `big` for the GPU, else sizes the interpreter runs in seconds."""
    groups, max_m, r, c = (40, 40, 320, 288) if big else (6, 9, 37, 29)

    def ints(n: int, low: int, high: int) -> Tensor:
        return torch.randint(low, high + 1, (n,), generator=g)

    out = []
    # Ragged: some problems without rows, windows anywhere (so many wrap), distinct sources.
    m = ints(groups, 0, max_m)
    m[0] = 0
    n, k = ints(groups, 1, r), ints(groups, 1, c)
    out.append(ProblemSet("ragged", GroupedProblems.build(m, n, k, row_start=ints(groups, 0, r - 1),
                                                          col_start=ints(groups, 0, c - 1)),
                          (int(m.sum()) + 3, int(k.max())), (groups, r, c)))
    # One shared source, windows that start near its end: they wrap and overlap (atomic dW).
    shared = max(3, groups // 2)
    m, n, k = ints(shared, 1, max_m), ints(shared, r // 2, r), ints(shared, c // 2, c)
    out.append(ProblemSet("wrapping_shared", GroupedProblems.build(m, n, k, source=0,
                                                                   row_start=ints(shared, r // 2, r - 1),
                                                                   col_start=ints(shared, c // 2, c - 1)),
                          (int(m.sum()), int(k.max())), (1, r, c)))
    # Empty along each axis (K = 0: Y = bias), plus one ordinary problem and uncovered rows.
    m = torch.tensor([0, 5, 4, 3, 7])
    n = torch.tensor([6, 0, 9, 5, 11])
    k = torch.tensor([5, 8, 0, 7, 13])
    out.append(ProblemSet("empty", GroupedProblems.build(m, n, k, row_offset=[0, 1, 7, 12, 16],
                                                         row_start=ints(5, 0, 11), col_start=ints(5, 0, 12)),
                          (25, 13), (5, 12, 13)))
    return out


def grouped_gemm(ctx: Context, rec: Recorder) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 reference is exact-ish
    g = ctx.generator(11)
    sets = problem_sets(g, big=ctx.cuda)
    variants: list[tuple[torch.dtype, bool]] = [(torch.float32, False), (torch.float16, False)]
    if ctx.cuda:
        variants += [(torch.float32, True), (torch.bfloat16, False)]
    else:
        rec.skip("bf16", "the Triton interpreter computes bf16 wrongly (KERNELS.md): GPU only")
        rec.skip("fp32 with tf32 dots", "no tensor cores under the interpreter: GPU only")
    for dtype, tf32 in variants:
        label = "tf32" if tf32 else DTYPE_NAMES[dtype]
        for ps in sets:
            tiles = default_tiles(ps.problems)
            tiled = [tiles] + ([TileConfig(16, 16, 16)] if ctx.cuda and dtype == torch.float32 and not tf32 else [])
            for t in tiled:
                poisoned_passes(ctx, rec, ps, dtype, tf32, t, CHECK_TOLERANCE[label], g)
            check_autograd(ctx, rec, ps, dtype, tf32, tiles, CHECK_TOLERANCE[label], g)
    n_ok = sum(c["ok"] for c in rec.cases)
    rec.summary = (f"{n_ok}/{len(rec.cases)} cases ok over {len(sets)} problem sets x "
                   f"{', '.join('tf32' if t else DTYPE_NAMES[d] for d, t in variants)}")


def inputs(ctx: Context, ps: ProblemSet, dtype: torch.dtype, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    x = torch.randn(ps.x_shape, generator=g).to(ctx.device, dtype)
    w = (torch.randn(ps.w_shape, generator=g) / max(ps.x_shape[1], 1) ** 0.5).to(ctx.device, dtype)
    b = torch.randn(ps.w_shape[:2], generator=g).to(ctx.device, dtype)
    return x, w, b


def reference_grads(x: Tensor, w: Tensor, b: Tensor, dy: Tensor, problems: GroupedProblems) -> list[Tensor]:
    """y, dX, dW, db of the fp32 reference on the same (rounded) inputs."""
    leaves = [t.detach().float().requires_grad_(True) for t in (x, w, b)]
    y = grouped_linear_reference(leaves[0], leaves[1], leaves[2], problems)
    return [y.detach(), *torch.autograd.grad(y, leaves, dy.float())]


def coverage(ps: ProblemSet, device: torch.device) -> dict[str, Tensor]:
    """Which elements of Y, dX, dW, db the kernels must write (the rest they must not touch)."""
    rows, cols = ps.x_shape
    n_max = ps.problems.max_out_features
    s, r, c = ps.w_shape
    y, dx = torch.zeros(rows, n_max, dtype=torch.bool), torch.zeros(rows, cols, dtype=torch.bool)
    dw, db = torch.zeros(s, r, c, dtype=torch.bool), torch.zeros(s, r, dtype=torch.bool)
    for row, m, n, k, source, r0, c0 in ps.problems.table.tolist():
        y[row:row + m, :n] = True
        dx[row:row + m, :k] = True
        if m and n:
            window_rows = wrapped_window(r0, n, r, torch.device("cpu"))
            db[source, window_rows] = True
            dw[source, window_rows.unsqueeze(1), wrapped_window(c0, k, c, torch.device("cpu")).unsqueeze(0)] = True
    return {name: t.to(device) for name, t in (("y", y), ("dx", dx), ("dw", dw), ("db", db))}


def poisoned_passes(ctx: Context, rec: Recorder, ps: ProblemSet, dtype: torch.dtype, tf32: bool, tiles: TileConfig,
                    tolerance: float, g: torch.Generator) -> None:
    label = f"{'tf32' if tf32 else DTYPE_NAMES[dtype]} {ps.name} tiles {tiles.block_m}x{tiles.block_n}x{tiles.block_k}"
    x, w, b = inputs(ctx, ps, dtype, g)
    dy = torch.randn(ps.x_shape[0], ps.problems.max_out_features, generator=g).to(ctx.device, dtype)
    want = dict(zip(("y", "dx", "dw", "db"), reference_grads(x, w, b, dy, ps.problems), strict=True))
    cover = coverage(ps, ctx.device)
    y = poisoned(want["y"].shape, dtype, ctx.device)
    forward_launch(x, w, b, y, ps.problems, tiles, tf32).run()
    dx = poisoned(x.shape, dtype, ctx.device)
    grad_input_launch(dy, w, dx, ps.problems, tiles, tf32).run()
    # Overlapping windows accumulate atomically into zeroed buffers; otherwise poison them too.
    fill = 0.0 if ps.problems.shares_sources else float("nan")
    dw = torch.full(w.shape, fill, device=ctx.device)
    db = torch.full(b.shape, fill, device=ctx.device)
    grad_weight_launch(dy, x, dw, db, ps.problems, tiles, tf32).run()
    ctx.sync()
    for name, got in (("y", y), ("dx", dx), ("dw", dw), ("db", db)):
        rec.case(f"{label} {name}", relative_error(got, want[name], cover[name]), tolerance)
        outside = got[~cover[name]]
        if name in ("y", "dx") or not ps.problems.shares_sources:
            rec.require(bool(torch.isnan(outside).all()), f"{label} {name}: nothing written outside the problems")
        else:
            rec.require(bool((outside == 0).all()), f"{label} {name}: nothing added outside the windows")


def check_autograd(ctx: Context, rec: Recorder, ps: ProblemSet, dtype: torch.dtype, tf32: bool, tiles: TileConfig,
                   tolerance: float, g: torch.Generator) -> None:
    x, w, b = inputs(ctx, ps, dtype, g)
    result = check_kernel(LayerCase(ps.name, "autograd", ps.problems, x, w, b), tiles, tf32, tolerance)
    for name, error in result["max_error_relative_to_max"].items():
        rec.case(f"{'tf32' if tf32 else DTYPE_NAMES[dtype]} {ps.name} autograd {name}", error, tolerance)
