"""pytest-benchmark: the CPU aggregation backends vs the HeteroFL/FedRolex fancy-index loop vs a copy of
the bytes that must move, on the full-size cases of bench_aggregation.py (1,000 MLP clients at width
1/8, 200 CNN clients at width 1/16). Collected only by `pytest bench --benchmark-enable` (`make bench`);
compare the groups' means (bench_aggregation.py prints the ratios and GB/s directly)."""

from __future__ import annotations

import pytest
from aggregation_cases import copy_buffers, fancy_index_loop, make_case, run_backend

CASES = ("mlp", "cnn")


@pytest.fixture(scope="module", params=CASES)
def case(request):
    return make_case(request.param)


def describe(benchmark, case, impl):
    benchmark.group = f"aggregation-{case.name}"
    benchmark.extra_info.update(case=case.name, impl=impl, clients=len(case.batch), moved_mb=case.moved_bytes / 1e6)


@pytest.mark.parametrize("backend", ["torch", "numba"])
@pytest.mark.parametrize("kind", ["broadcast", "overlap"])
def test_backend(benchmark, case, backend, kind):
    describe(benchmark, case, f"{backend}/{kind}")
    run_backend(case, kind, backend)  # compile and warm up outside the timing
    benchmark.pedantic(run_backend, args=(case, kind, backend), rounds=5, iterations=1)


def test_fancy_index_loop(benchmark, case):
    describe(benchmark, case, "fancy-index loop")
    benchmark.pedantic(fancy_index_loop, args=(case,), rounds=2, iterations=1)


def test_copy_of_the_moved_bytes(benchmark, case):
    describe(benchmark, case, "copy")
    src, dst = copy_buffers(case)
    benchmark(dst.copy_, src)
