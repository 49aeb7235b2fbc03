"""One small launch of every GPU kernel, for `compute-sanitizer --tool memcheck` (check_sanitizer.py
runs this script under it): the Triton aggregation kernels, the Triton grouped GEMM's three
passes (plain and atomic dW; fp32, fp16, bf16), the CUDA extension and the NVRTC (CuPy) build of
the csrc/ kernels. Odd sizes, so every boundary mask matters.

    python bench/gpu/sanitizer_launches.py [--cpu]   # --cpu: the Triton kernels interpreted (dry run)
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import torch  # noqa: E402
from harness import Context  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.cpu else "cuda")
    ctx = Context(dry_run=args.cpu, device=device, work_dir=Path("."), deadline=time.monotonic() + 600, seed=0)
    launched = aggregation_kernels(ctx) + grouped_gemm_kernels(ctx)
    print(f"{launched} launches done")
    return 0


def done(ctx: Context, what: str) -> int:
    ctx.sync()
    print(f"launched {what}", flush=True)
    return 1


def aggregation_kernels(ctx: Context) -> int:
    from check_aggregation import apply_inputs, run_apply, run_scatter, scatter_inputs

    from fedbrb_fast.kernels import aggregation_triton

    impls: dict[str, Any] = {"triton": aggregation_triton}
    if ctx.cuda:
        from fedbrb_fast.aggregation.backends.cuda_backend import extension

        impls["cuda"] = extension()
        if importlib.util.find_spec("cupy") is not None:
            from fedbrb_fast.aggregation.backends.cupy_kernels import nvrtc_kernels

            impls["cupy"] = nvrtc_kernels()
    g = torch.Generator().manual_seed(0)
    count = 0
    for name, impl in impls.items():
        for data_dtype, acc, layout in ((torch.float16, torch.float32, "mask"), (torch.float32, torch.float64, "col"),
                                        (torch.float32, torch.float32, "col_all_rows")):
            args = scatter_inputs((5, 13, 11, 3, 7, 5), data_dtype, acc, layout, g)
            run_scatter(impl.scatter_add, args, acc, ctx.device)
            count += done(ctx, f"{name} scatter_add {data_dtype}->{acc} C per {layout}")
        for p_dtype, acc in ((torch.float16, torch.float32), (torch.float32, torch.float64)):
            args = apply_inputs((15, 10, 3, 5, 5), p_dtype, acc, "elem", g)
            for broadcast in (False, True):
                run_apply(impl, args, broadcast, acc, ctx.device)
                count += done(ctx, f"{name} apply ({'broadcast' if broadcast else 'overlap'}) {p_dtype}<-{acc}")
    return count


def grouped_gemm_kernels(ctx: Context) -> int:
    from check_grouped_gemm import DTYPE_NAMES, inputs, problem_sets

    from fedbrb_fast.kernels.grouped_gemm_launch import (
        default_tiles,
        forward_launch,
        grad_input_launch,
        grad_weight_launch,
    )

    g = torch.Generator().manual_seed(0)
    dtypes = [torch.float32, torch.float16] + ([torch.bfloat16] if ctx.cuda else [])
    count = 0
    for ps in problem_sets(g, big=False):
        tiles = default_tiles(ps.problems)
        for dtype in dtypes:
            x, w, b = inputs(ctx, ps, dtype, g)
            y = torch.zeros(ps.x_shape[0], ps.problems.max_out_features, dtype=dtype, device=ctx.device)
            forward_launch(x, w, b, y, ps.problems, tiles, False).run()
            count += done(ctx, f"grouped_gemm forward {ps.name} {DTYPE_NAMES[dtype]}")
            grad_input_launch(y, w, torch.zeros_like(x), ps.problems, tiles, False).run()
            count += done(ctx, f"grouped_gemm grad_input {ps.name} {DTYPE_NAMES[dtype]}")
            dw = torch.zeros(w.shape, device=ctx.device)
            db = torch.zeros(b.shape, device=ctx.device)
            grad_weight_launch(y, x, dw, db, ps.problems, tiles, False).run()
            count += done(ctx, f"grouped_gemm grad_weight {ps.name} {DTYPE_NAMES[dtype]}"
                          f"{' (atomic)' if ps.problems.shares_sources else ''}")
    return count


if __name__ == "__main__":
    sys.exit(main())
