"""Benchmark the CPU aggregation backends against, in the same run, the HeteroFL/FedRolex-style
fancy-index loop and a plain copy of the bytes that must move (client updates read once, global
tensors read and written once).

    python bench/bench_aggregation.py --out bench/results/aggregation.json [--cases mlp,cnn] [--repeats 7]

Each timing takes `--repeats` runs of the whole public call (validation, accumulation, finalize);
ratios use the fastest run of each (other processes on a shared machine only ever add time), the
medians are reported beside them. Per backend: seconds, speedup over the fancy-index loop, GB/s of
the bytes that must move, and that as a fraction of the copy's GB/s (the copy is timed before,
between and after the backends). Timings on shared 2-core machines vary up to 2x between runs:
compare the ratios.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numba
import torch
from aggregation_cases import Case, copy_buffers, fancy_index_loop, make_case, run_backend

from fedbrb_fast.outputs import atomic_write_text

# (label, backend, accumulation dtype or None for the public aggregate() call)
BACKENDS = (("torch", "torch", None), ("numba", "numba", None), ("numba-float64-sums", "numba", torch.float64))


def run_times(fn: Callable[[], object], repeats: int) -> list[float]:
    fn()  # warm-up: compilation, caches, allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def bench_case(case: Case, kind: str, repeats: int, baseline_repeats: int) -> dict:
    src, dst = copy_buffers(case)
    copy_times: list[float] = []
    copy_times += run_times(lambda: dst.copy_(src), repeats)
    baseline = run_times(lambda: fancy_index_loop(case), baseline_repeats)
    rows = {}
    for label, backend, dtype in BACKENDS:
        copy_times += run_times(lambda: dst.copy_(src), repeats)
        times = run_times(functools.partial(run_backend, case, kind, backend, dtype), repeats)
        rows[label] = {"seconds": min(times), "median_seconds": statistics.median(times),
                       "speedup_vs_fancy_index": min(baseline) / min(times),
                       "gb_per_s": case.moved_bytes / min(times) / 1e9}
    copy_times += run_times(lambda: dst.copy_(src), repeats)
    copy_gbps = case.moved_bytes / min(copy_times) / 1e9
    for row in rows.values():
        row["copy_fraction"] = row["gb_per_s"] / copy_gbps
    return {"case": case.name, "rule": kind, "clients": len(case.batch), "client_mb": case.client_bytes / 1e6,
            "global_mb": case.global_bytes / 1e6, "moved_mb": case.moved_bytes / 1e6,
            "copy_seconds": min(copy_times), "copy_median_seconds": statistics.median(copy_times),
            "copy_gb_per_s": copy_gbps, "fancy_index_seconds": min(baseline),
            "fancy_index_median_seconds": statistics.median(baseline), "backends": rows}


def print_table(results: list[dict]) -> None:
    header = ("case", "rule", "backend", "best", "median", "vs fancy", "GB/s", "of copy")
    print("{:5} {:9} {:20} {:>10} {:>10} {:>9} {:>7} {:>8}".format(*header))
    for r in results:
        print(f"{r['case']:5} {r['rule']:9} {'copy (same bytes)':20} {r['copy_seconds'] * 1e3:8.2f}ms "
              f"{r['copy_median_seconds'] * 1e3:8.2f}ms {'':9} {r['copy_gb_per_s']:7.2f} {'1.00':>8}")
        print(f"{r['case']:5} {r['rule']:9} {'fancy-index loop':20} {r['fancy_index_seconds'] * 1e3:8.1f}ms "
              f"{r['fancy_index_median_seconds'] * 1e3:8.1f}ms {'1.0x':>9} "
              f"{r['moved_mb'] / 1e3 / r['fancy_index_seconds']:7.2f}")
        for label, row in r["backends"].items():
            print(f"{r['case']:5} {r['rule']:9} {label:20} {row['seconds'] * 1e3:8.2f}ms "
                  f"{row['median_seconds'] * 1e3:8.2f}ms {row['speedup_vs_fancy_index']:8.1f}x "
                  f"{row['gb_per_s']:7.2f} {row['copy_fraction']:8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--cases", default="mlp,cnn")
    parser.add_argument("--rules", default="broadcast,overlap")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--baseline-repeats", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the full client count (quick runs)")
    args = parser.parse_args()
    results = []
    for name in args.cases.split(","):
        case = make_case(name, args.scale)
        for kind in args.rules.split(","):
            results.append(bench_case(case, kind, args.repeats, args.baseline_repeats))
    print_table(results)
    if args.out:
        threading_layer = numba.config.THREADING_LAYER  # type: ignore[attr-defined]  # numba.config defines it via globals()
        meta = {"command": "python bench/bench_aggregation.py " + " ".join(f"--{k.replace('_', '-')} {v}"
                                                                           for k, v in vars(args).items() if v),
                "machine": platform.processor() or platform.machine(), "cpus": torch.get_num_threads(),
                "numba_threads": numba.get_num_threads(), "numba_threading_layer": threading_layer,
                "torch": torch.__version__, "numba": numba.__version__}
        atomic_write_text(args.out, json.dumps({"meta": meta, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
