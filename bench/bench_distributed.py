"""Scale-out on torch.distributed: client-updates/s of the same workload on 1 process vs 2
processes (the distributed engine over gloo), on this machine.

    python bench/bench_distributed.py --out bench/results/distributed.json
    python bench/bench_distributed.py --quick                                  # seconds

Settings, each in fresh processes with its thread count fixed (torch, OpenMP, numba):
  1 proc x 2 threads   the batched engine: the baseline every ratio is against (same run)
  1 proc x 1 thread    the batched engine on one core: what each rank has
  2 procs x 1 thread   the distributed engine, launched with torchrun (gloo)
Workloads: BASE (MNIST-5k, MLP 784-[256, 256]-10 with static BN, 20
clients per round at width 1/8) and two heavier variants of it: mlp-wide (MLP 784-[1024, 1024]-10
with GroupNorm, widths 1/8, 1/4, 1/2, 40 clients per round) and cnn (HeteroFL CNN [32, 64, 128, 256]
with static BN, widths 1/4, 1/2). Every round is timed whole (plan, train, aggregate, evaluate),
after warm-up rounds; each row records the updates excluded (none: the workload really trains) and
the last accuracy. Client-updates/s = clients trained / wall seconds of the timed
rounds. The distributed rows also time the all-reduce of a buffer the size of the round's sums alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workload:
    overrides: tuple[str, ...]  # on BASE
    rounds: int  # timed rounds per measurement


# The workloads' common settings, on the embedded default config: MNIST-5k, 2 label shards per
# client, MLP 784-[256, 256]-10 with static BN, 20 clients per round, evaluation every round (the
# embedded default of the figures in docs/distributed.md).
BASE = ("data.dataset='mnist5k'", "data.partition='shards'", "data.shards_per_client=2", "model.norm='bn'",
        "clients.per_round=20", "train.lr=0.02", "train.lr_schedule='constant'", "train.lr_milestones=[]",
        "eval.every=1")
WORKLOADS = {
    "mlp": Workload(overrides=(), rounds=40),  # BASE itself
    "mlp-wide": Workload(overrides=("model.hidden=[1024, 1024]", "model.norm='gn'",
                                    'clients.widths=["1/8", "1/4", "1/2"]', "clients.per_round=40"), rounds=16),
    "cnn": Workload(overrides=("model.arch='cnn'", "model.hidden=[32, 64, 128, 256]",
                               'clients.widths=["1/4", "1/2"]'), rounds=8),
}
SETTINGS = [("1 proc x 2 threads", 1, 2), ("1 proc x 1 thread", 1, 1), ("2 procs x 1 thread", 2, 1)]
WARMUP = 2


def worker(args: argparse.Namespace) -> None:
    """One rank of one measurement: warm up, time `rounds` rounds, rank 0 writes the result."""
    import torch
    import torch.distributed as dist

    from fedbrb_fast.config import load_config
    from fedbrb_fast.engines import Simulation

    torch.set_num_threads(args.threads)
    engine = "distributed" if args.procs > 1 else "batched"
    cfg = load_config(None, [*BASE, *WORKLOADS[args.workload].overrides, f"train.engine='{engine}'",
                             f"rounds={WARMUP + args.rounds}"])
    sim = Simulation(cfg)
    for _ in range(WARMUP):
        sim.run_round()
    if dist.is_initialized():
        dist.barrier()
    start = time.perf_counter()
    records = [sim.run_round() for _ in range(args.rounds)]
    seconds = time.perf_counter() - start
    result = {
        "workload": args.workload, "procs": args.procs, "threads_per_proc": args.threads, "rounds": args.rounds,
        "seconds": seconds, "client_updates": sum(r.clients - r.dropped for r in records),
        "excluded_updates": sum(r.excluded for r in records), "last_accuracy": records[-1].accuracy,
        "phase_seconds_per_round": {k: sum(r.seconds.get(k, 0.0) for r in records) / args.rounds
                                    for k in ("train", "aggregate", "evaluate")},
    }
    result["client_updates_per_s"] = result["client_updates"] / seconds
    if dist.is_initialized():
        train = sum(r.seconds.get("train", 0.0) for r in records) / args.rounds
        per_rank: list = [None] * dist.get_world_size()
        dist.all_gather_object(per_rank, train)
        result["train_seconds_per_round_by_rank"] = per_rank  # the shards' balance
        # the communication alone: a buffer the size of the all-reduced sums (A and C of every tensor)
        buf = torch.zeros(2 * sum(v.numel() for v in sim.params.values()))
        dist.barrier()
        t = time.perf_counter()
        for _ in range(20):
            dist.all_reduce(buf)
        result["all_reduce_ms"] = (time.perf_counter() - t) / 20 * 1e3
        result["all_reduce_mb"] = buf.numel() * 4 / 2**20
    if int(os.environ.get("RANK", "0")) == 0:
        Path(args.result).write_text(json.dumps(result))


def measure(workload: str, procs: int, threads: int, rounds: int) -> dict:
    """One setting in fresh processes (torchrun for several), its thread count fixed by env."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "NUMBA_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        args = [__file__, "--worker", "--workload", workload, "--procs", str(procs), "--threads", str(threads),
                "--rounds", str(rounds), "--result", str(out)]
        launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
                    if procs > 1 else [sys.executable])
        proc = subprocess.run([*launcher, *args], env=env, cwd=tmp, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{workload}, {procs} procs x {threads} threads failed:\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="write results as JSON here")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--repeats", type=int, default=2, help="runs per setting; the fastest is reported")
    ap.add_argument("--quick", action="store_true", help="a few rounds of the default workload: check the script runs")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("workload", "procs", "threads", "rounds", "result"):
        ap.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        args.procs, args.threads, args.rounds = int(args.procs), int(args.threads), int(args.rounds)
        worker(args)
        return {}
    workloads = ["mlp"] if args.quick else args.workloads.split(",")
    rows = []
    for w in workloads:
        rounds = 3 if args.quick else WORKLOADS[w].rounds
        for label, procs, threads in SETTINGS:
            runs = [measure(w, procs, threads, rounds) for _ in range(1 if args.quick else args.repeats)]
            best = max(runs, key=lambda r: r["client_updates_per_s"])
            rows.append({**best, "setting": label,
                         "all_runs_client_updates_per_s": [r["client_updates_per_s"] for r in runs]})
        base = rows[-len(SETTINGS)]["client_updates_per_s"]
        for r in rows[-len(SETTINGS):]:
            r["vs_1_proc_2_threads"] = r["client_updates_per_s"] / base
    result = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "python": sys.version.split()[0], "torch": _torch_version(), "quick": args.quick,
              "warmup_rounds": WARMUP, "rows": rows}
    print(f"{'workload':9} {'setting':19} {'upd/s':>8} {'ratio':>6} {'train s':>8} {'aggr s':>7} {'eval s':>7} "
          f"{'all-reduce':>14} {'excl':>4} {'acc':>5}")
    for r in rows:
        ph = r["phase_seconds_per_round"]
        comm = f"{r['all_reduce_ms']:.2f} ms/{r['all_reduce_mb']:.1f} MB" if "all_reduce_ms" in r else ""
        print(f"{r['workload']:9} {r['setting']:19} {r['client_updates_per_s']:8.1f} {r['vs_1_proc_2_threads']:6.2f} "
              f"{ph['train']:8.4f} {ph['aggregate']:7.4f} {ph['evaluate']:7.4f} {comm:>14} {r['excluded_updates']:4d} "
              f"{r['last_accuracy']:5.3f}")
    if args.out:
        from fedbrb_fast.outputs import atomic_write_text

        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    return result


def _torch_version() -> str:
    import torch

    return torch.__version__


if __name__ == "__main__":
    main()
