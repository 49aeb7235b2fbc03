"""Check `speed_grouped_gemm`: the Triton grouped GEMM against cuBLAS `baddbmm` on the problems
padded to the largest client, and against a per-client loop of F.linear, timed interleaved in
the same run; TFLOP/s of useful work (2 M N K per problem, three times that forward + backward).

Shapes of bench/bench_grouped_gemm.py: 1,000 clients of widths 1/4, 1/8, 1/16 of a 1024-wide
layer with 10-32 rows each, for the 784->W0 and W0->W1 layers, in fp32 (ieee dots: the torch
baselines run without TF32 too) and bf16. Kernel weight layouts: `compact` (each client's own
weights, what the batched engine passes and what the baselines read) and `windows` (each client
a full-size source read through its wrap-around window).
"""

from __future__ import annotations

from typing import Any

import torch
from bench_grouped_gemm import LAYERS, PASSES, REALISTIC, TINY, bmm_fns, kernel_fns, loop_fns, make_case
from harness import Context, Recorder, interleaved

from fedbrb_fast.kernels.grouped_gemm_launch import default_tiles

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def speed_grouped_gemm(ctx: Context, rec: Recorder) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    layouts: tuple[str, ...]
    if ctx.cuda:
        spec, dtypes, layouts, reps, min_sample_s = REALISTIC, DTYPES, ("compact", "windows"), 5, 0.02
    else:
        spec, dtypes, layouts, reps, min_sample_s = TINY, {"fp32": torch.float32}, (), 2, 0.0
        rec.skip("Triton kernel timing", "the interpreter's speed means nothing: the torch baselines ran, tiny")
    rows: list[dict[str, Any]] = []
    for dtype_name, dtype in dtypes.items():
        for layer in LAYERS:
            if ctx.remaining() < 15:
                rec.skip(f"{layer} {dtype_name}", "time cap reached")
                continue
            baseline = make_case(spec, layer, "compact", dtype, ctx.device.type, ctx.seed % 10_000)
            fns = {"bmm_padded": bmm_fns(baseline), "loop": loop_fns(baseline)}
            for layout in layouts:
                case = make_case(spec, layer, layout, dtype, ctx.device.type, ctx.seed % 10_000)
                fns[f"triton_{layout}"] = kernel_fns(case, default_tiles(case.problems), False)
            for pass_name in PASSES:
                times = interleaved({impl: f[pass_name] for impl, f in fns.items()}, ctx.sync, reps=reps,
                                    min_sample_s=min_sample_s)
                flops = baseline.flops * (1 if pass_name == "forward" else 3)
                row: dict[str, Any] = {
                    "layer": layer,
                    "dtype": dtype_name,
                    "pass": pass_name,
                    "clients": len(baseline.problems.table),
                    "useful_gflop": flops / 1e9,
                    "impls": {impl: {"tflops": flops / t.best / 1e12, **t.as_dict()} for impl, t in times.items()},
                }
                if "triton_compact" in times:
                    row["triton_over_bmm"] = times["bmm_padded"].best / times["triton_compact"].best
                    row["triton_over_loop"] = times["loop"].best / times["triton_compact"].best
                rows.append(row)
                print(
                    f"  {layer:8} {dtype_name} {pass_name:17} "
                    + ", ".join(f"{impl} {r['tflops']:.2f} TFLOP/s" for impl, r in row["impls"].items()),
                    flush=True,
                )
    rec.metric("rows", rows)
    if ctx.cuda and rows:
        worst = min(rows, key=lambda r: r["triton_over_bmm"])
        rec.metric(
            "targets",
            [
                {
                    "name": "Triton grouped GEMM vs padded cuBLAS bmm (worst of layers x dtypes x passes)",
                    "value": worst["triton_over_bmm"],
                    "unit": "x (bmm time / triton time)",
                    "target": ">= 1",
                    "met": worst["triton_over_bmm"] >= 1.0,
                    "note": f"worst: {worst['layer']} {worst['dtype']} {worst['pass']}; all: "
                    + ", ".join(f"{r['layer']}/{r['dtype']}/{r['pass']} x{r['triton_over_bmm']:.2f}" for r in rows),
                }
            ],
        )
        rec.summary = (
            f"triton vs padded bmm x{min(r['triton_over_bmm'] for r in rows):.2f}.."
            f"x{max(r['triton_over_bmm'] for r in rows):.2f}, vs loop up to "
            f"x{max(r['triton_over_loop'] for r in rows):.0f}"
        )
    else:
        rec.summary = f"{len(rows)} baseline timings (no kernel timing without a GPU)"
