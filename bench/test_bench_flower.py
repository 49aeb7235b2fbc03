"""pytest-benchmark: one round's aggregation by the FedBRB Flower strategy vs Flower's FedAvg over
the same 100 reply Messages (width-1/8 sub-models of 784-[1024,1024]-10). Collected only by
`pytest bench --benchmark-enable` (`make bench`); bench_flower.py prints the ratios directly."""

from __future__ import annotations

import pytest
from flower_cases import decode_only, fedbrb_aggregate, flower_fedavg_aggregate, make_case, prepare_round


@pytest.fixture(scope="module")
def case():
    return make_case("mlp1024", 100)


def describe(benchmark, case, impl):
    benchmark.group = f"flower-aggregation-{case.name}"
    benchmark.extra_info.update(case=case.name, impl=impl, reply_mb=case.reply_bytes / 1e6)


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_fedbrb_strategy(benchmark, case, backend):
    describe(benchmark, case, f"fedbrb-{backend}")
    case.strategy.aggregation_backend = backend
    prepare_round(case)
    fedbrb_aggregate(case)  # compile and warm up outside the timing
    benchmark.pedantic(fedbrb_aggregate, args=(case,), setup=lambda: prepare_round(case), rounds=5, iterations=1)


def test_flower_fedavg(benchmark, case):
    describe(benchmark, case, "flower-fedavg")
    benchmark.pedantic(flower_fedavg_aggregate, args=(case,), rounds=5, iterations=1)


def test_decode_only(benchmark, case):
    describe(benchmark, case, "decode-only")
    benchmark.pedantic(decode_only, args=(case,), rounds=5, iterations=1)
