"""Per-round aggregation time of the FedBRB Flower strategy (fast aggregation API: decode, validate,
weighted-broadcast scatter into the global model) against Flower's own FedAvg aggregation over the
same reply Messages (same clients, same bytes), in the same run; plus the time just to decode the
replies, which both pay.

    python bench/bench_flower.py --out bench/results/flower.json [--cases mlp256:20,mlp256:100,mlp1024:100]
                                 [--threads 1,2]

Fastest of `--repeats` runs per method (others on a shared machine only add time); medians beside.
Per thread count (numba and torch; Flower's FedAvg is single-threaded numpy either way). With 2
threads on a 2-core machine that something else also uses, numba's parallel regions wait for
descheduled threads: compare 2-thread figures only from a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import flwr
import numba
import torch
from flower_cases import FlowerCase, decode_only, fedbrb_aggregate, flower_fedavg_aggregate, make_case, prepare_round

from fedbrb_fast.outputs import atomic_write_text


def run_times(fn: Callable[[], object], repeats: int, setup: Callable[[], object] = lambda: None) -> list[float]:
    setup()
    fn()  # warm-up: numba compilation, allocator
    times = []
    for _ in range(repeats):
        setup()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def bench_case(case: FlowerCase, backends: list[str], repeats: int, threads: int) -> dict:
    numba.set_num_threads(threads)
    torch.set_num_threads(threads)
    rows = {"flower-fedavg": run_times(lambda: flower_fedavg_aggregate(case), repeats),
            "decode-only": run_times(lambda: decode_only(case), repeats)}
    for backend in backends:
        case.strategy.aggregation_backend = backend
        rows[f"fedbrb-{backend}"] = run_times(lambda: fedbrb_aggregate(case), repeats, lambda: prepare_round(case))
    rows["flower-fedavg"] += run_times(lambda: flower_fedavg_aggregate(case), repeats)  # before and after
    base = min(rows["flower-fedavg"])
    return {"case": case.name, "threads": threads, "nodes": len(case.replies), "reply_mb": case.reply_bytes / 1e6,
            "global_mb": case.global_bytes / 1e6,
            "methods": {name: {"seconds": min(t), "median_seconds": statistics.median(t),
                               "speedup_vs_flower_fedavg": base / min(t)} for name, t in rows.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--cases", default="mlp256:20,mlp256:100,mlp1024:100", help="model:nodes,...")
    parser.add_argument("--backends", default="numba,torch")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", default="1,2", help="numba/torch thread counts to run")
    args = parser.parse_args()
    results = []
    for spec in args.cases.split(","):
        name, nodes = spec.split(":")
        case = make_case(name, int(nodes))
        for threads in map(int, args.threads.split(",")):
            results.append(bench_case(case, args.backends.split(","), args.repeats, threads))
    print(f"{'case':14} {'threads':>7} {'method':16} {'best':>10} {'median':>10} {'vs FedAvg':>10}")
    for r in results:
        for name, row in r["methods"].items():
            print(f"{r['case']:14} {r['threads']:>7} {name:16} {row['seconds'] * 1e3:8.2f}ms "
                  f"{row['median_seconds'] * 1e3:8.2f}ms "
                  f"{row['speedup_vs_flower_fedavg']:9.2f}x")
        print(f"{'':14} ({r['nodes']} replies, {r['reply_mb']:.1f} MB of sub-models, "
              f"global model {r['global_mb']:.1f} MB)")
    if args.out:
        threading_layer = numba.config.THREADING_LAYER  # type: ignore[attr-defined]  # numba.config defines it via globals()
        meta = {"command": "python bench/bench_flower.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items()
                                                                      if v and k != "out"),
                "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                "numba_threading_layer": threading_layer, "flwr": flwr.__version__,
                "torch": torch.__version__}
        atomic_write_text(args.out, json.dumps({"meta": meta, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
