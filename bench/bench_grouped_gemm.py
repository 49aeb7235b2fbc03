"""Benchmark the grouped block-sliced GEMM against a per-client torch loop and a padded torch.bmm.

    python bench/bench_grouped_gemm.py --out grouped_gemm.json [--dtype fp32|fp16|bf16] [--tf32] [--sweep]

On a GPU: TFLOP/s (useful flops, 2·ΣM·N·K per forward, three times that for forward+backward)
of every implementation over realistic shapes — 1,000 clients of widths 1/4, 1/8, 1/16 of a
1024-wide layer, 10-32 rows each, for the 784→W0 and W0→W1 layers — timed with
triton.testing.do_bench, after checking the kernels against the reference. Kernel weight
layouts: `windows` (each client a full-size copy of the layer, read through its wrap-around
window), `compact` (each client's own sub-weights from (0, 0)), `global` (every client slices
one tensor; dW accumulates atomically). The baselines get materialized per-client weights
(gathering and padding them is not timed).

Without a GPU: the kernels run tiny shapes under the Triton interpreter and are checked against
the reference; the torch baselines are timed on CPU for information; no GPU timing is taken.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

GPU = torch.cuda.is_available()
if not GPU:
    os.environ["TRITON_INTERPRET"] = "1"  # before the kernels (and triton) are imported

import triton  # noqa: E402

from fedbrb_fast.kernels.grouped_gemm import (  # noqa: E402
    GroupedProblems,
    TileConfig,
    grouped_linear_reference,
    grouped_linear_triton,
)
from fedbrb_fast.kernels.grouped_gemm_launch import default_tiles  # noqa: E402
from fedbrb_fast.kernels.grouped_gemm_reference import wrapped_window  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
LAYERS = ("784->W0", "W0->W1")
LAYOUTS = ("windows", "compact", "global")
PASSES = ("forward", "forward+backward")
SWEEP_TILES = (TileConfig(16, 64, 64), TileConfig(32, 64, 64), TileConfig(32, 128, 64), TileConfig(32, 64, 32),
               TileConfig(64, 64, 64), TileConfig(32, 128, 128, num_warps=8))
# Kernel vs reference, per dtype (tf32 dots round their inputs to 10 mantissa bits).
CHECK_TOLERANCE = {"fp32": 1e-4, "tf32": 2e-2, "fp16": 1e-2, "bf16": 5e-2}


@dataclass(frozen=True)
class ShapeSpec:
    clients: int
    in_features: int
    hidden: int
    num_blocks: int  # K = 1 / beta_min
    widths: tuple[float, ...]
    rows: tuple[int, int]  # client batch rows, inclusive range


REALISTIC = ShapeSpec(clients=1000, in_features=784, hidden=1024, num_blocks=16, widths=(1 / 4, 1 / 8, 1 / 16),
                      rows=(10, 32))
TINY = ShapeSpec(clients=6, in_features=28, hidden=64, num_blocks=16, widths=(1 / 4, 1 / 8, 1 / 16), rows=(3, 9))


@dataclass(frozen=True)
class LayerCase:
    """One layer of every client of a round, in one kernel weight layout."""

    layer: str
    layout: str
    problems: GroupedProblems
    x: Tensor  # [ΣM, K_max] packed client rows
    w_src: Tensor  # [S, R, C]
    b_src: Tensor  # [S, R]

    @property
    def flops(self) -> int:
        t = self.problems.table.to(torch.int64)
        return int(2 * (t[:, 1] * t[:, 2] * t[:, 3]).sum())


def make_case(spec: ShapeSpec, layer: str, layout: str, dtype: torch.dtype, device: str, seed: int = 0) -> LayerCase:
    """Clients drawn from `seed` on the CPU (the same clients on every device, layer and
    layout): a width, a batch size and a rolling block start per channel group; layer 784->W0
    slices group 0 on its out axis, W0->W1 group 1 on its out axis and group 0 on its in axis."""
    gen = torch.Generator().manual_seed(seed)
    n, block = spec.clients, spec.hidden // spec.num_blocks
    widths = torch.tensor(spec.widths)[torch.randint(len(spec.widths), (n,), generator=gen)]
    channels = (widths * spec.num_blocks).round().to(torch.int64) * block
    rows = torch.randint(spec.rows[0], spec.rows[1] + 1, (n,), generator=gen)
    start0, start1 = (torch.randint(spec.num_blocks, (n,), generator=gen) * block for _ in range(2))
    in_f: int | Tensor
    in_start: int | Tensor
    if layer == "784->W0":
        out_f, in_f, out_start, in_start, r, c = channels, spec.in_features, start0, 0, spec.hidden, spec.in_features
    else:
        out_f, in_f, out_start, in_start, r, c = channels, channels, start1, start0, spec.hidden, spec.hidden
    if layout == "windows":
        problems = GroupedProblems.build(rows, out_f, in_f, row_start=out_start, col_start=in_start)
        sources, r_src, c_src = n, r, c
    elif layout == "compact":
        problems = GroupedProblems.build(rows, out_f, in_f)
        sources, r_src, c_src = n, int(channels.max()), int(torch.as_tensor(in_f).max())
    else:
        problems = GroupedProblems.build(rows, out_f, in_f, source=0, row_start=out_start, col_start=in_start)
        sources, r_src, c_src = 1, r, c
    k_max = int(torch.as_tensor(in_f).max())
    values = torch.Generator(device=device).manual_seed(seed)  # on the device: windows sources reach 4 GB
    x = torch.randn(int(rows.sum()), k_max, generator=values, device=device)
    w_src = torch.randn(sources, r_src, c_src, generator=values, device=device) / k_max ** 0.5
    b_src = torch.randn(sources, r_src, generator=values, device=device)
    return LayerCase(layer, layout, problems, *(t.to(dtype) for t in (x, w_src, b_src)))


def client_weights(case: LayerCase) -> tuple[list[Tensor], list[Tensor]]:
    """Each client's materialized weight window and bias, for the baselines."""
    _, r, c = case.w_src.shape
    weights, biases = [], []
    for _, _, n, k, s, r0, c0 in case.problems.table.tolist():
        rows = wrapped_window(r0, n, r, case.x.device)
        weights.append(case.w_src[s].index_select(0, rows).index_select(1, wrapped_window(c0, k, c, case.x.device)))
        biases.append(case.b_src[s].index_select(0, rows))
    return weights, biases


def leaf(t: Tensor) -> Tensor:
    return t.detach().clone().requires_grad_(True)


def kernel_fns(case: LayerCase, tiles: TileConfig, tf32: bool) -> dict[str, Callable[[], object]]:
    x, w, b = leaf(case.x), leaf(case.w_src), leaf(case.b_src)
    dy = torch.randn(x.shape[0], case.problems.max_out_features, device=x.device).to(x.dtype)

    def forward():
        return grouped_linear_triton(x, w, b, case.problems, tiles=tiles, allow_tf32=tf32)

    return {"forward": forward, "forward+backward": lambda: torch.autograd.grad(forward(), (x, w, b), dy)}


def loop_fns(case: LayerCase) -> dict[str, Callable[[], object]]:
    """One F.linear per client on its rows of the packed input and its materialized weights."""
    weights, biases = client_weights(case)
    x = leaf(case.x)
    params = [leaf(t) for t in weights + biases]
    spans = [(row, m, k) for row, m, _, k, *_ in case.problems.table.tolist()]
    dys = [torch.randn(m, w.shape[0], device=x.device).to(x.dtype) for (_, m, _), w in zip(spans, weights, strict=True)]

    per_client = list(zip(spans, params[:len(weights)], params[len(weights):], strict=True))

    def forward():
        return [F.linear(x[row:row + m, :k], w, b) for (row, m, k), w, b in per_client]

    return {"forward": forward, "forward+backward": lambda: torch.autograd.grad(forward(), [x, *params], dys)}


def bmm_fns(case: LayerCase) -> dict[str, Callable[[], object]]:
    """One baddbmm over every client padded to the largest rows, out and in features."""
    weights, biases = client_weights(case)
    t = case.problems.table
    g, m_max, n_max, k_max = t.shape[0], int(t[:, 1].max()), int(t[:, 2].max()), int(t[:, 3].max())
    xp = case.x.new_zeros(g, m_max, k_max)
    wp, bp = case.x.new_zeros(g, n_max, k_max), case.x.new_zeros(g, n_max)
    for i, ((row, m, n, k, *_), w, b) in enumerate(zip(t.tolist(), weights, biases, strict=True)):
        xp[i, :m, :k], wp[i, :n, :k], bp[i, :n] = case.x[row:row + m, :k], w, b
    xp, wp, bp = leaf(xp), leaf(wp), leaf(bp)
    dy = torch.randn(g, m_max, n_max, device=xp.device).to(xp.dtype)

    def forward():
        return torch.baddbmm(bp.unsqueeze(1), xp, wp.transpose(1, 2))

    return {"forward": forward, "forward+backward": lambda: torch.autograd.grad(forward(), (xp, wp, bp), dy)}


def check_kernel(case: LayerCase, tiles: TileConfig, tf32: bool, tolerance: float) -> dict:
    """Forward and all gradients of the kernels vs autograd through the reference, in fp32."""
    x, w, b = leaf(case.x), leaf(case.w_src), leaf(case.b_src)
    xr, wr, br = (leaf(t.float()) for t in (case.x, case.w_src, case.b_src))
    y = grouped_linear_triton(x, w, b, case.problems, tiles=tiles, allow_tf32=tf32)
    y_ref = grouped_linear_reference(xr, wr, br, case.problems)
    dy = torch.randn(y.shape, device=y.device).to(y.dtype)
    names = ("y", "dx", "dw", "db")
    got = dict(zip(names, (y.detach(), *torch.autograd.grad(y, (x, w, b), dy)), strict=True))
    want = dict(zip(names, (y_ref.detach(), *torch.autograd.grad(y_ref, (xr, wr, br), dy.float())), strict=True))
    # Error relative to the largest reference entry: the sums here have up to 784 terms.
    errors = {name: float((got[name].float() - want[name]).abs().max() / want[name].abs().max().clamp_min(1e-12))
              for name in names}
    return {"layer": case.layer, "layout": case.layout, "tiles": tiles_label(tiles),
            "max_error_relative_to_max": errors, "ok": all(e <= tolerance for e in errors.values())}


def tiles_label(tiles: TileConfig) -> str:
    return f"{tiles.block_m}x{tiles.block_n}x{tiles.block_k}/w{tiles.num_warps}"


def time_gpu_ms(fn: Callable[[], object]) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def time_cpu_ms(fn: Callable[[], object], repeats: int = 5) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def timing_rows(case: LayerCase, impl: str, tiles: str, fns: dict, timer: Callable) -> list[dict]:
    rows = []
    for name in PASSES:
        ms = timer(fns[name])
        flops = case.flops * (1 if name == "forward" else 3)
        rows.append({"layer": case.layer, "layout": case.layout if impl == "triton" else "-", "pass": name,
                     "impl": impl, "tiles": tiles, "ms": ms, "tflops": flops / (ms * 1e-3) / 1e12,
                     "useful_gflop": flops / 1e9})
    return rows


def run(args: argparse.Namespace) -> dict:
    dtype_name = args.dtype
    dtype = DTYPES[dtype_name]
    torch.backends.cuda.matmul.allow_tf32 = args.tf32  # the torch baselines get the same dot precision
    tolerance = CHECK_TOLERANCE["tf32" if args.tf32 and dtype == torch.float32 else dtype_name]
    report = {"device": torch.cuda.get_device_name() if GPU else "cpu (no GPU)", "gpu_timing": GPU,
              "dtype": dtype_name, "allow_tf32": args.tf32, "checks": [], "timings": []}
    if GPU:
        spec, device = ShapeSpec(**{**REALISTIC.__dict__, "clients": args.clients}), "cuda"
        for layer in LAYERS:
            for layout in LAYOUTS:
                case = make_case(spec, layer, layout, dtype, device, args.seed)
                candidates = SWEEP_TILES if args.sweep else (default_tiles(case.problems),)
                report["checks"].append(check_kernel(case, candidates[0], args.tf32, tolerance))
                for tiles in candidates:
                    report["timings"] += timing_rows(case, "triton", tiles_label(tiles),
                                                     kernel_fns(case, tiles, args.tf32), time_gpu_ms)
            case = make_case(spec, layer, "compact", dtype, device, args.seed)
            report["timings"] += timing_rows(case, "torch-loop", "-", loop_fns(case), time_gpu_ms)
            report["timings"] += timing_rows(case, "torch-bmm-padded", "-", bmm_fns(case), time_gpu_ms)
    else:
        report["note"] = ("No GPU: no GPU timing was taken. The kernels ran tiny shapes under the Triton "
                          "interpreter (correctness only); the torch baselines were timed on CPU, "
                          f"{args.cpu_clients} clients of realistic widths, for information.")
        for layer in LAYERS:
            for layout in LAYOUTS:
                case = make_case(TINY, layer, layout, dtype, "cpu", args.seed)
                report["checks"].append(check_kernel(case, TileConfig(16, 16, 32), args.tf32, tolerance))
            spec = ShapeSpec(**{**REALISTIC.__dict__, "clients": args.cpu_clients})
            case = make_case(spec, layer, "compact", dtype, "cpu", args.seed)
            report["timings"] += timing_rows(case, "torch-loop", "-", loop_fns(case), time_cpu_ms)
            report["timings"] += timing_rows(case, "torch-bmm-padded", "-", bmm_fns(case), time_cpu_ms)
    return report


def print_report(report: dict) -> None:
    print(f"device: {report['device']}  dtype: {report['dtype']}  tf32: {report['allow_tf32']}")
    for check in report["checks"]:
        errors = ", ".join(f"{k} {v:.1e}" for k, v in check["max_error_relative_to_max"].items())
        print(f"check {check['layer']:8} {check['layout']:8} tiles {check['tiles']:14} "
              f"{'ok' if check['ok'] else 'FAILED'}  ({errors})")
    unit = "GPU" if report["gpu_timing"] else "CPU"
    for row in report["timings"]:
        print(f"{unit} {row['layer']:8} {row['pass']:17} {row['impl']:17} {row['layout']:8} {row['tiles']:14} "
              f"{row['ms']:9.3f} ms  {row['tflops']:8.3f} TFLOP/s")
    if not report["gpu_timing"]:
        print(report["note"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the report as JSON here")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--tf32", action="store_true", help="fp32 dots in tf32 (kernels and torch baselines)")
    parser.add_argument("--sweep", action="store_true", help="time the kernels at several tile configurations")
    parser.add_argument("--clients", type=int, default=REALISTIC.clients, help="clients on a GPU")
    parser.add_argument("--cpu-clients", type=int, default=64, help="clients for the CPU baseline timings")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    report = run(args)
    print_report(report)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    return 0 if all(check["ok"] for check in report["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
