"""The compiled CPU kernels against their plain-torch references, forward and forward + backward.

    python bench/bench_cpu_kernels.py --out bench/results/cpu_kernels.json [--quick]

Shapes are the Transformer's at the engine benchmark (50 clients x 10 sequences of 80 characters,
8 heads, width 1/8 unless stated):
  attention   qkv [500, 80, 3 * 8 * D] with a bias per client, head dimension D of width 1/16,
              1/8, 1/4 and 1/2 of the default model (2, 4, 8, 16; 16 has no lanes variant and
              times the reference alone)
  layer_norm  rows of the model dimension at widths 1/16, 1/8, 1/4 (16, 32, 64)
  layer_norm_and_shift  the same rows as [50, 800, C], with the next residual layer's bias per client
  bias_gelu   the MLP's [50, 800, 128] and, at width 1/4, [50, 800, 256]
Each kernel is checked against its reference, then both are timed interleaved (kernel, reference,
kernel, ...); the machine's matmul peak and copy bandwidth are measured around the run, and a drift
over 15% marks it noisy (not a result).
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
from machine_check import NoiseCheck, host_cpu, measure_speed  # noqa: E402

from fedbrb_fast.kernels import cpu_library  # noqa: E402
from fedbrb_fast.kernels.bias_gelu_cpu import SOURCE as BIAS_GELU  # noqa: E402
from fedbrb_fast.kernels.bias_gelu_cpu import bias_gelu_fused, bias_gelu_reference  # noqa: E402
from fedbrb_fast.kernels.causal_attention_cpu import (  # noqa: E402
    HEAD_DIMS,
    causal_attention_lanes,
    causal_attention_reference,
    lanes_unavailable,
)
from fedbrb_fast.kernels.layer_norm_cpu import SOURCE as LAYER_NORM  # noqa: E402
from fedbrb_fast.kernels.layer_norm_cpu import (  # noqa: E402
    layer_norm_and_shift_reference,
    layer_norm_and_shift_rows,
    layer_norm_reference,
    layer_norm_rows,
)
from fedbrb_fast.outputs import atomic_write_text  # noqa: E402

EPS = 1e-5


def total(out: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    return out.sum() if isinstance(out, torch.Tensor) else sum(o.sum() for o in out)  # type: ignore[return-value]


def pass_of(fn: Callable[..., Any], inputs: list[torch.Tensor], extra: tuple[Any, ...],
            backward: bool) -> Callable[[], dict]:
    def run() -> dict[str, float]:
        if backward:
            total(fn(*inputs, *extra)).backward()
        else:
            with torch.no_grad():
                fn(*inputs, *extra)
        return {}
    return run


def measure(kernel: str, shape: tuple[int, ...], contenders: dict[str, Callable[..., Any]],
            inputs: list[torch.Tensor], extra: tuple[Any, ...], repeats: int, rtol: float = 2e-5,
            atol: float = 2e-5) -> list[dict[str, Any]]:
    if "kernel" in contenders:
        with torch.no_grad():
            torch.testing.assert_close(contenders["kernel"](*inputs, *extra), contenders["reference"](*inputs, *extra),
                                       rtol=rtol, atol=atol)
    rows = []
    for backward in (False, True):
        times = interleaved({n: pass_of(f, inputs, extra, backward) for n, f in contenders.items()}, repeats)
        row: dict[str, Any] = {"kernel": kernel, "shape": list(shape),
                               "pass": "forward+backward" if backward else "forward",
                               **{f"{n}_best_s": t.best for n, t in times.items()},
                               **{f"{n}_median_s": t.median for n, t in times.items()}}
        if "kernel" in times:
            row["kernel_vs_reference"] = times["reference"].best / times["kernel"].best
        rows.append(row)
        print(f"{kernel:10} {str(shape):18} {row['pass']:17} reference {row['reference_best_s'] * 1e3:8.2f} ms" + (
            f"  kernel {row['kernel_best_s'] * 1e3:8.2f} ms  {row['kernel_vs_reference']:.2f}x" if "kernel" in times
            else ""))
    return rows


def leaf(*shape: int) -> torch.Tensor:
    return torch.randn(*shape).requires_grad_()


def attention_rows(clients: int, sequences: int, length: int, heads: int, repeats: int) -> list[dict[str, Any]]:
    rows = []
    for dim in (2, 4, 8, 16):
        qkv, bias = leaf(clients * sequences, length, 3 * heads * dim), leaf(clients, 3 * heads * dim)
        contenders = {"reference": causal_attention_reference}
        if dim in HEAD_DIMS:
            contenders = {"kernel": causal_attention_lanes, **contenders}
        rows += measure("attention", tuple(qkv.shape), contenders, [qkv], (heads, bias), repeats)
    return rows


def layer_norm_rows_of(tokens: int, repeats: int) -> list[dict[str, Any]]:
    return [r for width in (16, 32, 64) for r in measure(
        "layer_norm", (tokens, width), {"kernel": layer_norm_rows, "reference": layer_norm_reference},
        [leaf(tokens, width)], (EPS,), repeats, atol=2e-6)]


def layer_norm_and_shift_rows_of(clients: int, tokens: int, repeats: int) -> list[dict[str, Any]]:
    return [r for width in (16, 32, 64) for r in measure(
        "layer_norm_and_shift", (clients, tokens, width),
        {"kernel": layer_norm_and_shift_rows, "reference": layer_norm_and_shift_reference},
        [leaf(clients, tokens, width), leaf(clients, width)], (EPS,), repeats, atol=2e-6)]


def bias_gelu_rows(clients: int, tokens: int, repeats: int) -> list[dict[str, Any]]:
    return [r for width in (128, 256) for r in measure(
        "bias_gelu", (clients, tokens, width), {"kernel": bias_gelu_fused, "reference": bias_gelu_reference},
        [leaf(clients, tokens, width), leaf(clients, width)], (), repeats, atol=2e-6)]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="tiny shapes: checks the script runs")
    args = ap.parse_args(argv)
    reasons = [r for r in (lanes_unavailable(), *(cpu_library.unavailable(s) for s in (LAYER_NORM, BIAS_GELU))) if r]
    if reasons:
        raise SystemExit(f"the compiled CPU kernels are unavailable here: {reasons[0]}")
    torch.set_num_threads(args.threads)
    clients, sequences, length, heads = (2, 3, 12, 3) if args.quick else (50, 10, 80, 8)
    repeats = 2 if args.quick else args.repeats
    before = measure_speed()
    rows = (attention_rows(clients, sequences, length, heads, repeats)
            + layer_norm_rows_of(clients * sequences * length, repeats)
            + layer_norm_and_shift_rows_of(clients, sequences * length, repeats)
            + bias_gelu_rows(clients, sequences * length, repeats))
    check = NoiseCheck(before, measure_speed())
    print(f"drift {100 * check.drift:.0f}%" + (" NOISY: not a result" if check.noisy else " (quiet)"))
    result = {"machine": platform.processor() or platform.machine(), **host_cpu(), "threads": args.threads,
              "torch": torch.__version__, "noise": check.as_dict(), "rows": rows}
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
