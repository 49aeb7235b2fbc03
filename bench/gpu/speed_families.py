"""Checks `speed_preresnet` and `speed_transformer`: the engine benchmark's rows of those families
(bench/engine_cases.py, cases "preresnet" and "transformer") on the GPU, one round, train + aggregate:
- PreResNet-18 [64, 128, 256, 512] at width 1/16 on MNIST-5k (40 digits per client, one local epoch
  of batch 10), fedrolex, 50 and 200 clients per round;
- the default Transformer (4 layers, dim 256, 8 heads, MLP 1024) at width 1/8 on Shakespeare's
  speaking roles (80-character sequences, one local epoch of batch 10), fedbrb, 50 and 200 clients.
The batched engine with train.device = "cuda" — through the family's stacked forward, and through
the vmapped functional forward — against the plain per-client loop (bench/plain_loop.py: an
nn.Module per client loaded with its slices, torch.optim.SGD, meshgrid aggregation) with the global
model on the GPU. Timed interleaved in the same run; the loop is timed on its first `LOOP_CLIENTS`
clients and scaled (its cost is linear in clients). Seconds per round, client-updates/s, peak GPU
memory, the ratios. Correctness of the engine on the GPU: `engine_cuda`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

from engine_cases import contender, make_case
from harness import Context, Recorder, interleaved
from speed_training import with_peak_memory

CHUNK = 256  # train.max_clients_per_step, as bench_engines.py runs it
GPU_SIZES = [50, 200]
DRY_SIZES = [2]
LOOP_CLIENTS = 50
DRY_LOOP_CLIENTS = 1
ENGINES = ("batched", "vmapped")  # the stacked forward, the vmapped functional forward


@dataclass(frozen=True)
class FamilyRow:
    case: str  # bench/engine_cases.py
    label: str
    method: str


PRERESNET = FamilyRow("preresnet", "PreResNet-18 at 1/16", "fedrolex")
TRANSFORMER = FamilyRow("transformer", "Transformer at 1/8", "fedbrb")


def speed_preresnet(ctx: Context, rec: Recorder) -> None:
    speed_family(ctx, rec, PRERESNET)


def speed_transformer(ctx: Context, rec: Recorder) -> None:
    speed_family(ctx, rec, TRANSFORMER)


def speed_family(ctx: Context, rec: Recorder, family: FamilyRow) -> None:
    sizes, loop_clients = (GPU_SIZES, LOOP_CLIENTS) if ctx.cuda else (DRY_SIZES, DRY_LOOP_CLIENTS)
    reps = 5 if ctx.cuda else 1
    if not ctx.cuda:
        rec.skip("GPU timing", "no CUDA: a tiny model on the CPU exercises the code; the figures mean nothing")
    rows: list[dict[str, Any]] = []
    for clients in sizes:
        if ctx.remaining() < 15:
            rec.skip(f"{clients} clients", f"{ctx.remaining():.0f} s left of the check's time cap")
            continue
        row = measure(ctx, family, clients, min(clients, loop_clients), reps)
        rows.append(row)
        print(f"  {family.case} {clients:4d} clients: plain loop {row['plain']['round_s']:.3f} s/round; "
              + "; ".join(f"{e} {row[e]['round_s']:.3f} s/round (x{row[f'{e}_vs_plain']:.1f}, peak "
                          f"{row[e]['peak_gpu_mb']:.0f} MB)" for e in ENGINES), flush=True)
    rec.metric("rows", rows)
    rec.metric("setup", {"case": f"{family.case} (bench/engine_cases.py)", "method": family.method,
                         "max_clients_per_step": CHUNK,
                         "timed": "train + aggregate per round, as bench/bench_engines.py",
                         "loop": "timed on its first loop_clients clients and scaled: its cost is linear in clients"})
    best = max((r["batched_vs_plain"] for r in rows), default=0.0)
    rec.summary = f"{len(rows)} sizes; {family.label} batched vs plain per-client loop up to x{best:.1f}"


def measure(ctx: Context, family: FamilyRow, clients: int, loop_clients: int, reps: int) -> dict[str, Any]:
    case = make_case(family.case, clients, tiny=not ctx.cuda)
    device = ctx.device.type
    contestants = {"plain": contender("plain", case, family.method, range(loop_clients), device=device),
                   **{e: contender(e, case, family.method, range(clients), max_clients_per_step=CHUNK, device=device)
                      for e in ENGINES}}
    peaks: dict[str, float] = {}
    times = interleaved({name: partial(with_peak_memory, ctx, fn, peaks, name) for name, fn in contestants.items()},
                        ctx.sync, reps=reps, min_sample_s=0.0)
    row: dict[str, Any] = {"clients": clients, "loop_clients": loop_clients}
    for name in contestants:
        scale = clients / (loop_clients if name == "plain" else clients)
        round_s = times[name].best * scale
        row[name] = {"round_s": round_s, "median_round_s": times[name].median * scale,
                     "updates_per_s": clients / round_s, "peak_gpu_mb": peaks.get(name, 0.0), **times[name].as_dict()}
    for e in ENGINES:
        row[f"{e}_vs_plain"] = row["plain"]["round_s"] / row[e]["round_s"]
    return row
