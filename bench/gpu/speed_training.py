"""Check `speed_training`: one round of local training, the per-client loop on the GPU
(training_loop.py) against the batched engine (train.device = "cuda", linears through torch and
through the Triton grouped GEMM), at 100, 1,000 and 10,000 clients per round, timed interleaved
in the same run: client-updates/s, seconds per round, peak GPU memory, and the ratio.

Scenarios as bench/bench_engines.py: the MLP 784-[1024, 1024]-10 with clients at width 1/8 and
the HeteroFL CNN [64, 128, 256, 512] at 1/16 on 28x28 inputs; 50 random samples per client, one
epoch of batch 10, SGD with momentum. Each timed round is the engines' train_round (gather,
train, updates back to host for the batched engine); aggregation is timed elsewhere. The loop is
timed on its first `LOOP_CLIENTS` clients and scaled (its cost is linear in clients).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from harness import Context, Recorder, interleaved
from training_loop import train_round_per_client

from fedbrb_fast.data import FederatedData
from fedbrb_fast.engines import BatchedEngine, RoundContext
from fedbrb_fast.models import CNN, MLP
from fedbrb_fast.plans import make_round_plans
from fedbrb_fast.profiling import PhaseTimer
from fedbrb_fast.training import LocalTraining

SAMPLES, DRY_SAMPLES, BATCH = 50, 10, 10
HP = LocalTraining(epochs=1, batch_size=BATCH, lr=0.05, momentum=0.9, weight_decay=5e-4)
CHUNK = 1024  # train.max_clients_per_step of the batched engine on the GPU


@dataclass(frozen=True)
class Scenario:
    arch: str
    hidden: list[int]
    width: float
    input_shape: tuple[int, ...]

    def model(self) -> MLP | CNN:
        if self.arch == "mlp":
            return MLP(784, self.hidden, 10, norm="none")
        return CNN(1, self.hidden, 10, norm="bn")


GPU = {"mlp": Scenario("mlp", [1024, 1024], 1 / 8, (784,)),
       "cnn": Scenario("cnn", [64, 128, 256, 512], 1 / 16, (1, 28, 28))}
DRY = {"mlp": Scenario("mlp", [32, 32], 1 / 8, (784,)), "cnn": Scenario("cnn", [16, 16, 16, 16], 1 / 16, (1, 12, 12))}
# (clients per round, clients the loop is timed on)
GPU_SIZES = [(100, 50), (1000, 50), (10_000, 50)]
DRY_SIZES = [(4, 2)]
TARGET_RATIO_AT_1000 = 100.0
TARGET_ROUND_S_AT_10000 = 1.0


def speed_training(ctx: Context, rec: Recorder) -> None:
    scenarios, sizes = (GPU, GPU_SIZES) if ctx.cuda else (DRY, DRY_SIZES)
    reps = 5 if ctx.cuda else 2
    if not ctx.cuda:
        rec.skip("GPU timing", "no CUDA: tiny sizes on the CPU exercise the code; the figures mean nothing")
        rec.skip("batched engine with Triton linears", "the interpreter takes seconds per step: GPU only")
    rows: list[dict[str, Any]] = []
    for name, scenario in scenarios.items():
        for clients, loop_clients in sizes:
            if ctx.remaining() < (60 if clients >= 10_000 and ctx.cuda else 15):
                rec.skip(f"{name} at {clients} clients", f"{ctx.remaining():.0f} s left of the check's time cap")
                continue
            # Triton linears: the MLP's every layer; the CNN has only its classifier as a linear.
            backends = ("torch", "triton") if ctx.cuda and name == "mlp" else ("torch",)
            row = measure(ctx, scenario, clients, loop_clients, reps, backends)
            row["scenario"] = name
            rows.append(row)
            if ctx.cuda:
                torch.cuda.empty_cache()  # this size's data and engines are gone; return their memory
            print(f"  {name:3} {clients:6d} clients: loop {row['loop']['updates_per_s']:9.1f} upd/s; "
                  + "; ".join(f"batched[{b}] {row[f'batched_{b}']['updates_per_s']:9.1f} upd/s "
                              f"({row[f'batched_{b}']['round_s']:.3f} s/round, x{row[f'ratio_{b}']:.1f}, peak "
                              f"{row[f'batched_{b}']['peak_gpu_mb']:.0f} MB)" for b in backends), flush=True)
    rec.metric("rows", rows)
    rec.metric("setup", {"samples_per_client": SAMPLES, "batch_size": BATCH, "epochs": 1, "max_clients_per_step": CHUNK,
                         "loop": "timed on its first loop_clients clients and scaled: its cost is linear in clients",
                         "timed": "train_round only (gather, train, updates to host); no aggregation"})
    if ctx.cuda:
        rec.metric("targets", targets(rows))
    best = max((r["ratio_torch"] for r in rows), default=0.0)
    rec.summary = f"{len(rows)} sizes; batched vs per-client loop up to x{best:.0f}"


def measure(ctx: Context, scenario: Scenario, clients: int, loop_clients: int, reps: int,
            backends: tuple[str, ...]) -> dict[str, Any]:
    device = ctx.device
    g = torch.Generator(device=device).manual_seed(ctx.seed)
    m = SAMPLES if ctx.cuda else DRY_SAMPLES
    x = torch.randn(clients * m, *scenario.input_shape, generator=g, device=device)
    y = torch.randint(0, 10, (clients * m,), generator=g, device=device)
    data = FederatedData(x, y, x[:10], y[:10], 10, scenario.input_shape,
                         tuple(torch.arange(i * m, (i + 1) * m) for i in range(clients)))
    model = scenario.model()
    host_params = model.init(ctx.generator(1))
    device_params = {k: v.to(device) for k, v in host_params.items()}
    plans = make_round_plans("fedbrb", 0, list(range(clients)), [scenario.width] * clients,
                             group_sizes=model.layout.group_sizes, num_blocks=round(1 / scenario.width), seed=0,
                             group_segments=model.layout.group_segments)
    ctx_round = RoundContext(0, 0, model, data, HP, "samples", False)
    engines = {backend: BatchedEngine(CHUNK, linear_backend=backend, device=device.type) for backend in backends}
    timers = {backend: PhaseTimer() for backend in engines}
    contestants: dict[str, Callable[[], object]] = {
        "loop": lambda: train_round_per_client(ctx_round, plans[:loop_clients], device_params, device),
        **{f"batched_{b}": partial(e.train_round, ctx_round, plans, host_params, timers[b])
           for b, e in engines.items()},
    }
    peaks: dict[str, float] = {}
    times = interleaved({name: partial(with_peak_memory, ctx, fn, peaks, name) for name, fn in contestants.items()},
                        ctx.sync, reps=reps, min_sample_s=0.0)
    calls = reps + 1  # and interleaved()'s warm-up call
    phases = {backend: {k: v / calls for k, v in timer.seconds.items()} for backend, timer in timers.items()}
    row: dict[str, Any] = {"clients": clients, "loop_clients": loop_clients}
    for name in contestants:
        served = loop_clients if name == "loop" else clients
        round_s = times[name].best * clients / served  # the loop's time scaled to the round
        row[name] = {"round_s": round_s, "median_round_s": times[name].median * clients / served,
                     "updates_per_s": clients / round_s, "peak_gpu_mb": peaks.get(name, 0.0), **times[name].as_dict()}
    for backend in engines:
        row[f"batched_{backend}"]["phase_s_per_round"] = phases[backend]
        row[f"ratio_{backend}"] = row[f"batched_{backend}"]["updates_per_s"] / row["loop"]["updates_per_s"]
    return row


def with_peak_memory(ctx: Context, fn: Callable[[], object], peaks: dict[str, float], name: str) -> None:
    """Call `fn`, keeping in peaks[name] the most GPU memory it allocated above what it started
    with (the caching allocator counts on the host: no synchronization needed)."""
    if not ctx.cuda:
        fn()
        return
    base = torch.cuda.memory_allocated(ctx.device)
    torch.cuda.reset_peak_memory_stats(ctx.device)
    fn()
    peaks[name] = max(peaks.get(name, 0.0), (torch.cuda.max_memory_allocated(ctx.device) - base) / 2**20)


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    by_size = {(r["scenario"], r["clients"]): r for r in rows}
    if ("mlp", 1000) in by_size:
        r = by_size[("mlp", 1000)]
        ratio = max(r.get("ratio_torch", 0.0), r.get("ratio_triton", 0.0))
        out.append({"name": "batched vs per-client GPU loop, MLP, 1,000 clients", "value": ratio, "unit": "x",
                    "target": f">= {TARGET_RATIO_AT_1000:.0f}x", "met": ratio >= TARGET_RATIO_AT_1000,
                    "note": _phases(r)})
    if ("mlp", 10_000) in by_size:
        r = by_size[("mlp", 10_000)]
        seconds = min(r[f"batched_{b}"]["round_s"] for b in ("torch", "triton") if f"batched_{b}" in r)
        out.append({"name": "10,000-client MLP round at 1/8 (batched engine)", "value": seconds, "unit": "s",
                    "target": f"< {TARGET_ROUND_S_AT_10000:.0f} s", "met": seconds < TARGET_ROUND_S_AT_10000,
                    "note": _phases(r)})
    return out


def _phases(row: dict[str, Any]) -> str:
    phases = row["batched_torch"]["phase_s_per_round"]
    return "torch linears, per round: " + ", ".join(f"{k} {v:.3f} s" for k, v in phases.items())
