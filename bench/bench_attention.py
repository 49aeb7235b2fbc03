"""Causal attention on the CPU: the lanes kernel against torch's scaled_dot_product_attention.

    python bench/bench_attention.py --out bench/results/attention.json [--quick]

Shapes are the Transformer's at the engine benchmark (50 clients x 10 sequences of 80 characters,
8 heads) with the head dimension of width 1/16, 1/8, 1/4 and 1/2 of the default model (2, 4, 8,
16); q, k, v are views of projections, as the stacked forward passes them. Forward (evaluation)
and forward + backward (training) are timed interleaved (lanes, sdpa, lanes, ...) after a check
of the kernel against the reference; the machine's matmul peak and copy bandwidth are measured
around the run, and a drift over 15% marks it noisy (not a result). Head dimensions without a
lanes variant time the reference alone.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from interleave import interleaved  # noqa: E402
from machine_check import NoiseCheck, measure_speed  # noqa: E402

from fedbrb_fast.kernels.causal_attention_cpu import (  # noqa: E402
    HEAD_DIMS,
    causal_attention_lanes,
    causal_attention_reference,
    lanes_unavailable,
)
from fedbrb_fast.outputs import atomic_write_text  # noqa: E402

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def pass_of(fn: Attention, leaves: list[torch.Tensor], shape: tuple[int, ...], backward: bool) -> Callable[[], dict]:
    def run() -> dict[str, float]:
        q, k, v = (t.view(shape) for t in leaves)
        if backward:
            fn(q, k, v).sum().backward()
        else:
            with torch.no_grad():
                fn(q, k, v)
        return {}
    return run


def measure(sequences: int, length: int, heads: int, dim: int, repeats: int) -> list[dict[str, Any]]:
    shape = (sequences, length, heads, dim)
    leaves = [torch.randn(sequences, length, heads * dim, requires_grad=True) for _ in range(3)]
    contenders: dict[str, Attention] = {"sdpa": causal_attention_reference}
    if dim in HEAD_DIMS:
        contenders = {"lanes": causal_attention_lanes, **contenders}
        q, k, v = (t.view(shape) for t in leaves)
        torch.testing.assert_close(causal_attention_lanes(q, k, v), causal_attention_reference(q, k, v),
                                   rtol=2e-5, atol=2e-5)
    rows = []
    for backward in (False, True):
        times = interleaved({n: pass_of(f, leaves, shape, backward) for n, f in contenders.items()}, repeats)
        row: dict[str, Any] = {"shape": list(shape), "pass": "forward+backward" if backward else "forward",
                               **{f"{n}_best_s": t.best for n, t in times.items()},
                               **{f"{n}_median_s": t.median for n, t in times.items()}}
        if "lanes" in times:
            row["lanes_vs_sdpa"] = times["sdpa"].best / times["lanes"].best
        rows.append(row)
        print(f"{str(shape):22} {row['pass']:17} sdpa {row['sdpa_best_s'] * 1e3:8.2f} ms" + (
            f"  lanes {row['lanes_best_s'] * 1e3:8.2f} ms  {row['lanes_vs_sdpa']:.2f}x" if "lanes" in times else ""))
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="tiny shapes: checks the script runs")
    args = ap.parse_args(argv)
    reason = lanes_unavailable()
    if reason is not None:
        raise SystemExit(f"the lanes kernel is unavailable here: {reason}")
    torch.set_num_threads(args.threads)
    sequences, length, heads = (6, 12, 3) if args.quick else (500, 80, 8)
    repeats = 2 if args.quick else args.repeats
    before = measure_speed()
    rows = [r for dim in (2, 4, 8, 16) for r in measure(sequences, length, heads, dim, repeats)]
    check = NoiseCheck(before, measure_speed())
    print(f"drift {100 * check.drift:.0f}%" + (" NOISY: not a result" if check.noisy else " (quiet)"))
    result = {"machine": platform.processor() or platform.machine(), "threads": args.threads,
              "torch": torch.__version__, "noise": check.as_dict(), "rows": rows}
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
