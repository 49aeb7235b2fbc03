"""Does flushing denormals (`torch.set_flush_denormal(True)`) speed up the experiment suites' runs?

    python bench/denormals.py [--rounds 3] [--repeats 3]

For every suite in examples/suites (base config, fedbrb), one simulation per setting runs the same
rounds, interleaved (off, on, off, on, ...); per setting the best seconds per round and the
final model's largest difference between the two settings are printed. Flushing changes results
only where values fall below 1.2e-38.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from fedbrb_fast.engines import Simulation
from fedbrb_fast.experiments.suite import expand_runs, load_suite

SUITES = sorted((Path(__file__).resolve().parents[1] / "examples" / "suites").glob("*.toml"))


def seconds_per_round(cfg, flush: bool, rounds: int) -> tuple[float, dict[str, torch.Tensor]]:
    torch.set_flush_denormal(flush)
    try:
        sim = Simulation(cfg)
        sim.run_round()  # warm-up round (first-call costs)
        start = time.perf_counter()
        for _ in range(rounds):
            sim.run_round()
        return (time.perf_counter() - start) / rounds, sim.params
    finally:
        torch.set_flush_denormal(False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for path in SUITES:
        suite = load_suite(path)
        cfg = next(r.config for r in expand_runs(suite, "/tmp/denormal-runs") if r.config.method.name == "fedbrb")
        best = {False: float("inf"), True: float("inf")}
        models = {}
        for _ in range(args.repeats):
            for flush in (False, True):
                sec, models[flush] = seconds_per_round(cfg, flush, args.rounds)
                best[flush] = min(best[flush], sec)
        diff = max(float((models[True][k] - models[False][k]).abs().max()) for k in models[True])
        print(f"{path.stem:14} off {best[False]:.3f} s/round  on {best[True]:.3f} s/round  "
              f"ratio {best[False] / best[True]:.2f}  max |model difference| {diff:.2e}")


if __name__ == "__main__":
    main()
