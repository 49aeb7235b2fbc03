"""Check `nvtx_round`: one round of the batched engine (Triton linears on a GPU) under a minimal
NVTX tool, nvtx_collector.c, loaded the way Nsight Systems is loaded (NVTX_INJECTION64_PATH):
it records every range the `nvtx` package emits — the PhaseTimer's phases (fedbrb:plan, gather,
train, aggregate, evaluate) and the aggregation and grouped-GEMM ranges — and the check lists
them as nested paths with counts. nsys itself cannot produce reports on the GPU machine. The same
round runs under torch.profiler, whose top kernels (GPU) or operators (CPU) say where the time went.

The tool must be loaded before the process's first NVTX call: this check runs in its own fresh
child process and imports the project (which imports nvtx) only after setting the variable.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import torch
from harness import Context, Recorder, Skip

HERE = Path(__file__).resolve().parent
PHASES = ("fedbrb:plan", "fedbrb:gather", "fedbrb:train", "fedbrb:aggregate", "fedbrb:evaluate")
AGGREGATION = ("aggregate.validate", "aggregate.accumulate", "aggregate.finalize")
GROUPED_GEMM = ("grouped_gemm.forward", "grouped_gemm.grad_input", "grouped_gemm.grad_weight")


def nvtx_round(ctx: Context, rec: Recorder) -> None:
    library = build_collector(ctx)
    log = ctx.work_dir / "nvtx-ranges.tsv"
    log.unlink(missing_ok=True)
    os.environ["NVTX_INJECTION64_PATH"] = str(library)
    os.environ["FEDBRB_NVTX_LOG"] = str(log)
    import nvtx

    rec.require(nvtx.get_domain("fedbrb_fast") is not nvtx._lib.lib.dummy_domain,
                "the NVTX collector is attached (the fedbrb_fast domain is live)")
    profile = one_round(ctx)
    ranges = nested_ranges(log.read_text().splitlines())
    rec.metric("ranges", ranges)
    for path, count in ranges.items():
        print(f"  {count:5d} x {path}")
    names = {path.rsplit(" > ", 1)[-1] for path in ranges}
    expected = PHASES + AGGREGATION + (GROUPED_GEMM if ctx.cuda else ())
    missing = [name for name in expected if name not in names]
    rec.require(not missing, f"every expected range is emitted ({len(expected)})"
                             + (f"; missing {missing}" if missing else ""))
    if not ctx.cuda:
        rec.skip("grouped_gemm ranges", "the Triton linears run only on a GPU in this check")
    rec.metric("top", profile)
    print("  top by " + ("GPU" if ctx.cuda else "CPU") + " time: " + ", ".join(
        f"{p['name'][:40]} {p['ms']:.2f} ms" for p in profile[:5]))
    rec.summary = (f"{len(ranges)} distinct range paths, {sum(ranges.values())} ranges; all {len(expected)} "
                   "expected present" if not missing else f"missing ranges {missing}")


def build_collector(ctx: Context) -> Path:
    if shutil.which("gcc") is None:
        raise Skip("gcc is not installed: the NVTX collector cannot be built")
    include = nvtx_include_dir()
    if include is None:
        raise Skip("no nvtx3 headers found (CUDA toolkit include/ or the nvidia-nvtx wheel)")
    library = ctx.work_dir / "libnvtx_collector.so"
    run = subprocess.run(["gcc", "-shared", "-fPIC", "-O2", f"-I{include}", str(HERE / "nvtx_collector.c"),
                          "-o", str(library), "-lpthread"], capture_output=True, text=True, timeout=120)
    if run.returncode:
        raise RuntimeError(f"building the NVTX collector failed:\n{run.stderr[-2000:]}")
    return library


def nvtx_include_dir() -> Path | None:
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        roots.append(str(Path(nvcc).resolve().parent.parent))
    candidates = [Path(r) / "include" for r in roots if r]
    spec = importlib.util.find_spec("nvidia")
    for base in (spec.submodule_search_locations or []) if spec else []:
        candidates += sorted(Path(base).glob("*/include"))
    return next((c for c in candidates if (c / "nvtx3" / "nvToolsExt.h").is_file()), None)


def one_round(ctx: Context) -> list[dict]:
    from check_engine import config

    from fedbrb_fast.config import config_from_dict
    from fedbrb_fast.engines import Simulation

    raw = config("mlp", "fedbrb", ctx.seed % 100_000, ctx.cuda, engine="batched", device=ctx.device.type,
                 linear_backend="triton" if ctx.cuda else "torch")
    sim = Simulation(config_from_dict(raw))
    activities = [torch.profiler.ProfilerActivity.CPU]
    if ctx.cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        sim.run_round()
        ctx.sync()
    events = prof.key_averages()

    def device_us(e: object) -> float:
        return float(getattr(e, "device_time_total", getattr(e, "cuda_time_total", 0.0)))

    key = device_us if ctx.cuda else (lambda e: float(e.cpu_time_total))
    top = sorted(events, key=key, reverse=True)[:12]
    return [{"name": e.key, "ms": key(e) / 1e3, "calls": e.count} for e in top]


def nested_ranges(lines: list[str]) -> dict[str, int]:
    """'push<TAB>domain<TAB>message' / 'pop<TAB>domain' lines -> {'outer > inner': count}."""
    stacks: dict[str, list[str]] = {}
    counts: Counter[str] = Counter()
    for line in lines:
        kind, domain, *message = line.split("\t")
        stack = stacks.setdefault(domain, [])
        if kind == "push":
            stack.append(message[0] if message else "")
            counts[" > ".join(stack)] += 1
        elif stack:
            stack.pop()
    return dict(counts)
