"""Reference loop vs batched engine: client-updates/s, speedup, training GFLOP/s vs a same-run
matmul peak, and peak memory per chunk size.

    python bench/bench_engines.py --out bench/results/engines.json            # full size
    python bench/bench_engines.py --quick                                      # seconds

Scenarios (issue #3):
  (a) MLP 784-[1024, 1024]-10, clients at width 1/8, 1,000 clients x 50 samples, 1 epoch, batch 10,
      sampled from a population of 10,000 clients whose data is all in memory
  (b) HeteroFL CNN [64, 128, 256, 512] at width 1/16 on 28x28 inputs, 200 clients x 50 samples
Every measurement runs in a fresh process (peak RSS is that process's own) on random inputs of
the real shapes; the reference loop is timed on the first `--ref-clients` clients (its cost is
linear in clients) and reported per client.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

SCENARIOS = {
    "a": dict(arch="mlp", hidden=[1024, 1024], width=1 / 8, clients=1000, population=10000, samples=50,
              input_shape=(784,)),
    "b": dict(arch="cnn", hidden=[64, 128, 256, 512], width=1 / 16, clients=200, population=200, samples=50,
              input_shape=(1, 28, 28)),
}


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def training_gflop(model, widths: list[int], input_shape: tuple[int, ...], samples: int) -> float:
    """Model FLOPs of forward + backward (weight and input gradients, without the input gradient
    of the first layer, which autograd never computes)."""
    from fedbrb_fast.models import CNN

    if isinstance(model, CNN):
        fwd = model.flops_per_sample(widths, input_shape[1:])
        first_dx = 2 * input_shape[1] * input_shape[2] * widths[0] * input_shape[0] * 9
    else:
        fwd = model.flops_per_sample(widths)
        first_dx = 2 * model.in_features * widths[0]
    return (3 * fwd - first_dx) * samples / 1e9


def measure(scenario: str, spec: dict, engine: str, clients: int, max_clients_per_step: int, threads: int) -> dict:
    """One engine on one scenario `spec` (a SCENARIOS entry), in this (fresh) process."""
    import torch

    from fedbrb_fast.data import FederatedData
    from fedbrb_fast.engines import BatchedEngine, ReferenceEngine, RoundContext
    from fedbrb_fast.models import CNN, MLP
    from fedbrb_fast.plans import make_round_plans
    from fedbrb_fast.profiling import PhaseTimer
    from fedbrb_fast.training import LocalTraining

    torch.set_num_threads(threads)
    s = spec
    n, m, pop = s["clients"], s["samples"], s["population"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(pop * m, *s["input_shape"], generator=g)
    y = torch.randint(0, 10, (pop * m,), generator=g)
    data = FederatedData(x, y, x[:10], y[:10], 10, s["input_shape"],
                         tuple(torch.arange(i * m, (i + 1) * m) for i in range(pop)))
    sampled = sorted(torch.randperm(pop, generator=g)[:n].tolist())
    model = (MLP(784, s["hidden"], 10, norm="none") if s["arch"] == "mlp"
             else CNN(1, s["hidden"], 10, norm="bn"))
    params = model.init(torch.Generator().manual_seed(0))
    k = round(1 / s["width"])
    plans = make_round_plans("fedbrb", 0, sampled, [s["width"]] * n, group_sizes=model.layout.group_sizes,
                             num_blocks=k, seed=0)[:clients]
    ctx = RoundContext(0, 0, model, data, LocalTraining(1, 10, 0.05, 0.9, 5e-4), "samples", False)
    eng = ReferenceEngine() if engine == "reference" else BatchedEngine(max_clients_per_step)
    eng.train_round(ctx, plans[:2], params, PhaseTimer())  # warm-up: first-call costs are not throughput
    timer = PhaseTimer()
    start = time.perf_counter()
    eng.train_round(ctx, plans, params, timer)
    total = time.perf_counter() - start
    widths = [len(ix) for ix in plans[0].indices]
    gflop = training_gflop(model, widths, s["input_shape"], clients * m)
    return {
        "scenario": scenario, "engine": engine, "clients": clients, "population": pop,
        "max_clients_per_step": max_clients_per_step, "data_mb": (x.numel() * 4) / 2**20,
        "seconds": total, "gather_s": timer.seconds.get("gather", 0.0), "train_s": timer.seconds.get("train", 0.0),
        "client_updates_per_s": clients / total, "train_gflops": gflop / timer.seconds.get("train", total),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def in_fresh_process(fn, *args):
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="write results as JSON here")
    ap.add_argument("--scenarios", default="a,b")
    ap.add_argument("--ref-clients", type=int, default=100, help="clients the reference loop is timed on")
    ap.add_argument("--chunks", default="64,256,1000", help="max_clients_per_step values for the memory sweep (a)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: check the script runs")
    args = ap.parse_args(argv)
    if args.quick:
        SCENARIOS["a"].update(clients=40, population=80, hidden=[256, 256])
        SCENARIOS["b"].update(clients=8, population=8, hidden=[16, 32, 64, 128])
        args.ref_clients, args.chunks = 8, "16"
    peak = in_fresh_process(matmul_peak_gflops)
    rows = []
    for sc in args.scenarios.split(","):
        n = SCENARIOS[sc]["clients"]
        spec = SCENARIOS[sc]
        ref = in_fresh_process(measure, sc, spec, "reference", min(args.ref_clients, n), 256, args.threads)
        bat = in_fresh_process(measure, sc, spec, "batched", n, 256, args.threads)
        for r in (ref, bat):
            r["fraction_of_matmul_peak"] = r["train_gflops"] / peak
        bat["speedup_vs_reference"] = bat["client_updates_per_s"] / ref["client_updates_per_s"]
        rows += [ref, bat]
        if sc == "a":
            for c in (int(v) for v in args.chunks.split(",") if int(v) != 256):
                r = in_fresh_process(measure, sc, spec, "batched", n, c, args.threads)
                r["fraction_of_matmul_peak"] = r["train_gflops"] / peak
                r["speedup_vs_reference"] = r["client_updates_per_s"] / ref["client_updates_per_s"]
                rows.append(r)
    result = {"matmul_peak_gflops": peak, "threads": args.threads, "machine": platform.processor() or platform.machine(),
              "python": sys.version.split()[0], "quick": args.quick, "rows": rows}
    print(f"matmul peak (2048^3 fp32, same run): {peak:.1f} GFLOP/s")
    print(f"{'scen':4} {'engine':9} {'clients':>7} {'chunk':>5} {'upd/s':>9} {'speedup':>7} {'gather s':>8} "
          f"{'train s':>8} {'GFLOP/s':>8} {'of peak':>7} {'RSS MB':>7}")
    for r in rows:
        print(f"{r['scenario']:4} {r['engine']:9} {r['clients']:7d} {r['max_clients_per_step']:5d} "
              f"{r['client_updates_per_s']:9.1f} {r.get('speedup_vs_reference', 1.0):7.1f} {r['gather_s']:8.3f} "
              f"{r['train_s']:8.3f} {r['train_gflops']:8.1f} {100 * r['fraction_of_matmul_peak']:6.1f}% {r['peak_rss_mb']:7.0f}")
    if args.out:
        from fedbrb_fast.outputs import atomic_write_text

        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
