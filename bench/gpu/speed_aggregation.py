"""Check `speed_aggregation`: one FedBRB round's aggregation on the GPU backends — torch, triton,
cuda (the nvcc-built extension) and cupy (the same kernels compiled by NVRTC) — against a
device-to-device copy of the same bytes, timed interleaved in the same run.

Cases of bench/aggregation_cases.py at full size: 1,000 clients of the MLP 784-[1024, 1024]-10
at 1/8 and 200 clients of the HeteroFL CNN at 1/16, everything on the GPU. Bytes that must move:
the client updates read once, the global tensors read and written once; the copy moves as many.
Per backend: the public aggregate() (validation included) and the kernels alone (accumulate and
finalize of an Accumulator given validated updates).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
from aggregation_cases import Case, make_case
from harness import Context, Recorder, interleaved

from fedbrb_fast.aggregation import Accumulator, ClientBatch, aggregate

TARGET_COPY_FRACTION = 0.5


def speed_aggregation(ctx: Context, rec: Recorder) -> None:
    if ctx.cuda:
        backends = ["torch", "triton", "cuda"] + (["cupy"] if importlib.util.find_spec("cupy") else [])
        cases = [make_case("mlp"), make_case("cnn")]
        reps, min_sample_s = 5, 0.02
    else:
        backends = ["torch", "numba"]
        cases = [make_case("mlp", 0.004, [8, 8]), make_case("cnn", 0.015, [16, 16, 16, 16])]
        reps, min_sample_s = 2, 0.0
        rec.skip("GPU backends (triton, cuda, cupy)",
                 "no CUDA: the CPU backends exercise the code; the figures mean nothing")
    rows = []
    for case in cases:
        if ctx.remaining() < 15:
            rec.skip(f"case {case.name}", "time cap reached")
            continue
        rows.append(measure(ctx, on_device(case, ctx.device), backends, reps, min_sample_s))
    rec.metric("rows", rows)
    rec.metric("bytes", "client updates read once + global tensors read and written once; the copy moves as many")
    if ctx.cuda and rows:
        mlp = rows[0]
        best = max(mlp["backends"].items(), key=lambda kv: kv[1]["api"]["copy_fraction"])
        rec.metric("targets", [{
            "name": "aggregation vs same-run device copy, MLP case (best backend, public API)",
            "value": best[1]["api"]["copy_fraction"], "unit": "of copy GB/s", "target": f">= {TARGET_COPY_FRACTION}",
            "met": best[1]["api"]["copy_fraction"] >= TARGET_COPY_FRACTION,
            "note": f"{best[0]}; kernels alone {best[1]['kernels']['copy_fraction']:.2f} of copy"}])
    summary = []
    for row in rows:
        fractions = ", ".join(f"{b} {r['api']['copy_fraction']:.2f}" for b, r in row["backends"].items())
        summary.append(f"{row['case']}: of copy {fractions}")
        if "cuda_over_cupy" in row:
            summary[-1] += f"; cupy/cuda time x{1 / row['cuda_over_cupy']:.2f}"
    rec.summary = "; ".join(summary)


def on_device(case: Case, device: torch.device) -> Case:
    b = case.batch
    batch = ClientBatch(b.clients, b.weights, tuple(i.to(device) for i in b.indices),
                        {k: v.to(device) for k, v in b.params.items()}, {k: v.to(device) for k, v in b.masks.items()})
    return Case(case.name, case.layout, {k: v.to(device) for k, v in case.params.items()}, batch, case.num_blocks)


def measure(ctx: Context, case: Case, backends: list[str], reps: int, min_sample_s: float) -> dict[str, Any]:
    rule = case.rule("broadcast")
    src = torch.randn(case.moved_bytes // 4, device=ctx.device,
                      generator=torch.Generator(ctx.device).manual_seed(ctx.seed))
    dst = torch.empty_like(src)

    def kernels_only(backend: str) -> object:
        acc = Accumulator(case.params, case.layout, rule, backend=backend)
        acc.add_validated([case.batch])
        return acc.finalize()

    contestants: dict[str, Any] = {"copy": lambda: dst.copy_(src)}
    for b in backends:
        contestants[f"{b}/api"] = lambda b=b: aggregate(case.params, case.layout, [case.batch], rule, backend=b)
        contestants[f"{b}/kernels"] = lambda b=b: kernels_only(b)
    times = interleaved(contestants, ctx.sync, reps=reps, min_sample_s=min_sample_s)
    copy_gbps = case.moved_bytes / times["copy"].best / 1e9
    row: dict[str, Any] = {"case": case.name, "clients": len(case.batch), "moved_mb": case.moved_bytes / 1e6,
                           "copy_gb_per_s": copy_gbps, "copy": times["copy"].as_dict(), "backends": {}}
    for b in backends:
        row["backends"][b] = {}
        for part in ("api", "kernels"):
            t = times[f"{b}/{part}"]
            gbps = case.moved_bytes / t.best / 1e9
            row["backends"][b][part] = {"gb_per_s": gbps, "copy_fraction": gbps / copy_gbps, **t.as_dict()}
        print(f"  {case.name} {b:6}: API {row['backends'][b]['api']['best_s'] * 1e3:8.2f} ms "
              f"({row['backends'][b]['api']['copy_fraction']:.2f} of copy), kernels "
              f"{row['backends'][b]['kernels']['best_s'] * 1e3:8.2f} ms "
              f"({row['backends'][b]['kernels']['copy_fraction']:.2f} of copy); copy {copy_gbps:.0f} GB/s", flush=True)
    if "cuda" in backends and "cupy" in backends:
        row["cuda_over_cupy"] = times["cuda/kernels"].best / times["cupy/kernels"].best
    return row
