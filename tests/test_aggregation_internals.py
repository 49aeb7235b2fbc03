"""Pieces of the fused aggregation paths: index sets as contiguous runs, NVTX ranges."""

import itertools
import sys

import numpy as np
import nvtx
import torch
from aggregation_rounds import NUM_BLOCKS, assert_same_result, make_round
from hypothesis import given, settings
from hypothesis import strategies as st

from fedbrb_fast import profiling
from fedbrb_fast.aggregation import AggregationRule, aggregate
from fedbrb_fast.aggregation.index_runs import runs_kernel, runs_of_arrays, sliced_axis, whole_axis
from fedbrb_fast.plans import window


def expand(runs, n, k):
    """Back from runs to the [n, k] index tensor."""
    out = torch.full((n, k), -1, dtype=torch.int64)
    for i, client in enumerate(runs.per_client()):
        for start, local, length in client:
            out[i, local:local + length] = torch.arange(start, start + length)
    return out


def test_wrap_around_windows_are_at_most_two_runs():
    index = torch.stack([window(s, 5, 12) for s in (0, 3, 7, 8, 11)])
    runs = sliced_axis(index).runs
    assert [len(c) for c in runs.per_client()] == [1, 1, 1, 2, 2]
    assert runs.per_client()[4] == [(11, 0, 1), (0, 1, 4)]
    assert torch.equal(expand(runs, 5, 5), index)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(0, 30), min_size=1, max_size=8, unique=True), min_size=1, max_size=5)
       .filter(lambda sets: len({len(s) for s in sets}) == 1))
def test_runs_reproduce_any_index_set(sets):
    index = torch.tensor(sets)
    runs = sliced_axis(index).runs
    assert torch.equal(expand(runs, *index.shape), index)
    for client in runs.per_client():  # maximal runs: consecutive runs never continue each other
        assert all(a[0] + a[2] != b[0] for a, b in itertools.pairwise(client))
    # numba's loops (runs_kernel with numba installed) and the array version used without it agree
    assert runs_kernel() is not runs_of_arrays
    for got, expected in zip(runs_kernel()(index.numpy()), runs_of_arrays(index.numpy()), strict=True):
        assert got.dtype == expected.dtype == np.int64 and np.array_equal(got, expected)


def test_a_whole_axis_is_one_run_per_client():
    axis = whole_axis(3, 7)
    assert axis.index.stride(0) == 0 and axis.runs.per_client() == [[(0, 0, 7)]] * 3


def test_phases_and_kernel_launches_are_nvtx_ranges(monkeypatch):
    entered = []
    real = nvtx.annotate

    def record(message, **kwargs):
        entered.append((message, kwargs.get("domain")))
        return real(message, **kwargs)

    monkeypatch.setattr(nvtx, "annotate", record)
    layout, params, updates = make_round("mlp", "fedbrb")
    aggregate(params, layout, updates, AggregationRule("broadcast", 0.3, NUM_BLOCKS), backend="numba")
    messages = {m for m, domain in entered if domain == "fedbrb_fast"}
    assert {"aggregate.validate", "aggregate.accumulate", "aggregate.finalize"} <= messages
    for name in layout.names:
        assert f"aggregate.numba.scatter_add:{name}" in messages and f"aggregate.numba.finalize:{name}" in messages


def test_nvtx_ranges_are_no_ops_without_the_nvtx_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "nvtx", None)  # as if nvtx were not installed
    profiling._nvtx.cache_clear()
    try:
        timer = profiling.PhaseTimer()
        with timer.phase("train"):
            pass
        layout, params, updates = make_round("mlp", "fedbrb")
        rule = AggregationRule("broadcast", 0.3, NUM_BLOCKS)
        expected = aggregate(params, layout, updates, rule)
        assert_same_result(aggregate(params, layout, updates, rule, backend="numba"), expected)
        assert profiling._nvtx() is None and timer.reset()["train"] >= 0
    finally:
        profiling._nvtx.cache_clear()
