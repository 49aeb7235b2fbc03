"""Compile every variant of the grouped GEMM kernels for a GPU target, no GPU needed.

The interpreter accepts code the compiler rejects (e.g. tl.dot blocks below 16), so the tests
also compile each launch the launchers build — per dtype, dot precision, bias, atomics, and at
the smallest and the default tiles — for sm_90. Runs only where TRITON_INTERPRET is unset (the
tests start it in a subprocess):

    python -m fedbrb_fast.kernels.grouped_gemm_compile [--arch 90]
"""

from __future__ import annotations

import argparse
import time

import torch

from fedbrb_fast.optional import require

from .grouped_gemm_kernels import INTERPRETED
from .grouped_gemm_launch import (
    KernelLaunch,
    TileConfig,
    default_tiles,
    forward_launch,
    grad_input_launch,
    grad_weight_launch,
)
from .grouped_gemm_problems import GroupedProblems

require("triton", "the Triton grouped GEMM")
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

# The dot paths: fp32 at both precisions, fp16, bf16 (upcast, always tf32).
DOT_VARIANTS = ((torch.float32, False), (torch.float32, True), (torch.float16, False), (torch.bfloat16, False))
SMALLEST_TILES = TileConfig(16, 16, 16)
# sm_90 allows 227 KiB of shared memory per block; the compiler reports what a kernel needs, the
# launch would fail on the GPU.
MAX_SHARED_BYTES = {90: 232448}


def variant_launches() -> list[KernelLaunch]:
    """Every kernel variant the launchers can produce — kernel, dot path, bias, atomics — at the
    default tiles of a realistic first layer (784 inputs, windows of a 256-row source), plus each
    kernel and dot path at the smallest tiles; built on CPU tensors."""
    distinct = GroupedProblems.build([20, 12], [64, 256], [784, 128], row_start=[3, 0], col_start=[0, 5])
    shared = GroupedProblems.build([20, 12], [64, 256], [784, 128], source=0, row_start=[3, 0], col_start=[0, 5])
    launches = []
    for dtype, tf32 in DOT_VARIANTS:
        x, y = torch.zeros(32, 784, dtype=dtype), torch.zeros(32, 256, dtype=dtype)
        w, b = torch.zeros(2, 256, 784, dtype=dtype), torch.zeros(2, 256, dtype=dtype)
        dw, db = torch.zeros(2, 256, 784), torch.zeros(2, 256)  # fp32 gradient buffers
        tiles = default_tiles(distinct)
        for bias, bias_grad in ((b, db), (None, None)):
            launches.append(forward_launch(x, w, bias, y, distinct, tiles, tf32))
            launches += [grad_weight_launch(y, x, dw, bias_grad, p, tiles, tf32) for p in (distinct, shared)]
        launches.append(grad_input_launch(y, w, x, distinct, tiles, tf32))
        launches += [forward_launch(x, w, b, y, distinct, SMALLEST_TILES, tf32),
                     grad_weight_launch(y, x, dw, db, distinct, SMALLEST_TILES, tf32),
                     grad_input_launch(y, w, x, distinct, SMALLEST_TILES, tf32)]
    return launches


def describe(launch: KernelLaunch) -> str:
    c, t = launch.constexprs, launch.tiles
    flags = [name.lower() for name in ("HAS_BIAS", "ATOMIC", "UPCAST") if c.get(name)]
    dtype = launch.signature()[next(iter(launch.args))][1:]
    blocks = f"{t.block_m}x{t.block_n}x{t.block_k}"
    return f"{launch.name}[{dtype}, {c['PRECISION']}, {'+'.join(flags) or 'plain'}, {blocks}]"


def compile_launch(launch: KernelLaunch, target: GPUTarget):
    source = triton.compiler.ASTSource(fn=launch.kernel, signature=launch.signature(), constexprs=launch.constexprs)
    options = {"num_warps": launch.tiles.num_warps, "num_stages": launch.tiles.num_stages}
    return triton.compile(source, target=target, options=options)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability, e.g. 90 for sm_90")
    parser.add_argument("--shard", default="0/1", help="i/n: compile every n-th variant from the i-th (parallel runs)")
    args = parser.parse_args(argv)
    if INTERPRETED:
        raise SystemExit("TRITON_INTERPRET is set: the kernels are interpreted and cannot be compiled; unset it")
    index, count = map(int, args.shard.split("/"))
    target = GPUTarget("cuda", args.arch, 32)
    max_shared = MAX_SHARED_BYTES.get(args.arch)
    start = time.perf_counter()
    launches = variant_launches()[index::count]
    for launch in launches:
        compiled = compile_launch(launch, target)
        shared = compiled.metadata.shared
        if "cubin" not in compiled.asm or (max_shared is not None and shared > max_shared):
            raise SystemExit(f"{describe(launch)}: no cubin or {shared} bytes of shared memory (> {max_shared})")
        print(f"compiled {describe(launch)} for sm_{args.arch}: ptx + cubin, {shared} bytes shared memory")
    print(f"{len(launches)} variants compiled in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
