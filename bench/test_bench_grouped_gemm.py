"""pytest-benchmark: the grouped block-sliced GEMM kernels vs the per-client torch loop vs padded
torch.bmm, per layer and pass. Collected only by `pytest bench --benchmark-enable` (`make bench`).

On a GPU the shapes are the realistic ones of bench_grouped_gemm.py (1,000 clients). Without a
GPU the kernels run tiny shapes once under the Triton interpreter — a check that the path works,
not a timing (marked in extra_info) — and the baselines are timed on CPU on the same shapes.
"""

from __future__ import annotations

import bench_grouped_gemm as bench  # sets TRITON_INTERPRET=1 before triton is imported when there is no GPU
import pytest
import torch

from fedbrb_fast.kernels.grouped_gemm_launch import default_tiles

SPEC = bench.REALISTIC if bench.GPU else bench.TINY
DEVICE = "cuda" if bench.GPU else "cpu"
IMPLS = ("triton", "torch-loop", "torch-bmm-padded")


def synchronized(fn):
    if not bench.GPU:
        return fn

    def run():
        fn()
        torch.cuda.synchronize()

    return run


@pytest.mark.parametrize("pass_name", bench.PASSES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("layer", bench.LAYERS)
def test_grouped_gemm(benchmark, layer, impl, pass_name):
    case = bench.make_case(SPEC, layer, "windows" if impl == "triton" else "compact", torch.float32, DEVICE)
    flops = case.flops * (1 if pass_name == "forward" else 3)
    benchmark.extra_info.update(layer=layer, impl=impl, clients=SPEC.clients, useful_gflop=flops / 1e9,
                                gpu_timing=bench.GPU)
    if impl == "triton":
        tiles = default_tiles(case.problems)
        check = bench.check_kernel(case, tiles, False, bench.CHECK_TOLERANCE["fp32"])
        assert check["ok"], check
        fn = bench.kernel_fns(case, tiles, tf32=False)[pass_name]
        if not bench.GPU:
            benchmark.extra_info["note"] = "Triton interpreter on CPU: proves the path, not a timing"
            benchmark.pedantic(fn, rounds=1, iterations=1)
            return
    else:
        fn = (bench.loop_fns if impl == "torch-loop" else bench.bmm_fns)(case)[pass_name]
    benchmark(synchronized(fn))
