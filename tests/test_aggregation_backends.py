"""Every CPU backend against the plain-torch reference on the same inputs (docs/algorithm.md#aggregation)."""

import re
import sys

import pytest
import torch
from aggregation_rounds import NUM_BLOCKS, assert_same_result, batched, make_round, poisoned

from fedbrb_fast.aggregation import Accumulator, AggregationError, AggregationRule, ClientUpdate, aggregate, index_runs
from fedbrb_fast.aggregation.backends import get_backend
from fedbrb_fast.models import extract

BACKENDS = ["torch", "numba"]
RULES = {
    "overlap": AggregationRule("overlap"),
    "lam0": AggregationRule("broadcast", lam=0.0, num_blocks=NUM_BLOCKS),
    "lam0.3": AggregationRule("broadcast", lam=0.3, num_blocks=NUM_BLOCKS),
    "lam1": AggregationRule("broadcast", lam=1.0, num_blocks=NUM_BLOCKS),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize("method", ["fedbrb", "fedrolex", "heterofl", "fd", "fedavg"])
@pytest.mark.parametrize("arch", ["mlp", "cnn", "segmented", pytest.param("preresnet18", marks=pytest.mark.slow),
                                  pytest.param("transformer", marks=pytest.mark.slow)])
def test_backend_matches_reference(arch, method, rule, backend):
    layout, params, updates = make_round(arch, method, label_mask=method == "fedrolex", zero_weight=method == "fd")
    expected = aggregate(params, layout, updates, RULES[rule])
    got = aggregate(params, layout, updates, RULES[rule], backend=backend)
    assert got.backend == backend
    assert_same_result(got, expected)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ["fedbrb", "fd"])
@pytest.mark.parametrize("arch", ["cnn", "segmented", pytest.param("preresnet18", marks=pytest.mark.slow),
                                  pytest.param("transformer", marks=pytest.mark.slow)])
def test_stacked_batches_match_reference(arch, method, backend):
    layout, params, updates = make_round(arch, method, label_mask=True)
    rule = RULES["lam0.3"]
    got = aggregate(params, layout, batched(updates), rule, backend=backend)
    expected = aggregate(params, layout, updates, rule)
    assert sorted(got.included) == sorted(expected.included)
    for name in layout.names:
        assert torch.allclose(got.params[name], expected.params[name], atol=1e-5), name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("stacked", [False, True])
def test_non_finite_updates_are_excluded_and_reported(backend, bad, stacked):
    layout, params, updates = make_round("mlp", "fedbrb")
    updates[2] = poisoned(updates[2], "hidden1.weight", bad)
    updates[4] = poisoned(poisoned(updates[4], "out.bias", bad), "hidden0.weight", -bad)
    updates[1] = ClientUpdate(updates[1].client, 0.0, updates[1].indices, updates[1].params)  # weight 0 ...
    updates[1] = poisoned(updates[1], "out.weight", bad)  # ... and non-finite: still excluded
    rule = RULES["lam0.3"]
    expected = aggregate(params, layout, updates, rule)
    got = aggregate(params, layout, batched(updates) if stacked else updates, rule, backend=backend)
    assert got.excluded == expected.excluded and len(got.excluded) == 3
    for name in layout.names:
        assert torch.isfinite(got.params[name]).all()
        assert torch.allclose(got.params[name], expected.params[name], atol=1e-5), name


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_accumulation_and_float64_models(backend):
    layout, params, updates = make_round("mlp", "fedrolex")
    params = {k: v.double() for k, v in params.items()}
    updates = [ClientUpdate(u.client, u.weight, u.indices, {k: v.double() for k, v in u.params.items()})
               for u in updates]
    expected = aggregate(params, layout, updates, RULES["lam0.3"])
    got = aggregate(params, layout, updates, RULES["lam0.3"], backend=backend)
    assert_same_result(got, expected, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inputs_are_never_modified(backend):
    layout, params, updates = make_round("cnn", "fedbrb", label_mask=True)
    items = batched(updates)
    before = {k: v.clone() for k, v in params.items()}
    saved = [{k: v.clone() for k, v in u.params.items()} for u in updates]
    res = aggregate(params, layout, items, RULES["lam1"], backend=backend)
    assert all(torch.equal(before[k], params[k]) for k in params)
    assert all(torch.equal(s[k], u.params[k]) for s, u in zip(saved, updates, strict=True) for k in s)
    assert all(res.params[k].data_ptr() != params[k].data_ptr() for k in params)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_round_returns_a_copy_of_the_model(backend):
    layout, params, _ = make_round("mlp", "fedbrb")
    res = aggregate(params, layout, [], RULES["lam0.3"], backend=backend)
    assert res.included == [] and all(torch.equal(res.params[k], params[k]) for k in params)


def test_auto_picks_numba_on_cpu_and_says_so():
    layout, params, updates = make_round("mlp", "heterofl")
    res = aggregate(params, layout, updates, RULES["overlap"], backend="auto")
    assert res.backend == "numba"
    assert aggregate(params, layout, updates, RULES["overlap"]).backend == "reference"


def exactly(message: str) -> str:
    return f"^{re.escape(message)}$"


def test_numba_leaves_torchs_thread_count_as_it_was():
    """numba and torch share one OpenMP runtime: the kernels must not change torch's setting."""
    layout, params, updates = make_round("mlp", "heterofl")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        aggregate(params, layout, updates, RULES["overlap"], backend="numba")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


def test_unknown_and_unavailable_backends_are_named(monkeypatch):
    layout, params, updates = make_round("mlp", "heterofl")
    unknown = ("unknown aggregation backend 'fast'; expected one of "
               "('reference', 'torch', 'numba', 'triton', 'cuda', 'cupy', 'auto')")
    with pytest.raises(AggregationError, match=exactly(unknown)):
        aggregate(params, layout, updates, RULES["overlap"], backend="fast")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("triton", "cuda", "cupy"):
        needs_gpu = (f"aggregation backend '{name}' is not available: it needs a CUDA GPU and none is available; "
                     "CPU backends: reference, torch, numba")
        with pytest.raises(AggregationError, match=exactly(needs_gpu)):
            aggregate(params, layout, updates, RULES["overlap"], backend=name)
    reference = ("backend 'reference' is the plain-torch rule of aggregate(); streaming accumulation runs on one of "
                 "('torch', 'numba', 'triton', 'cuda', 'cupy', 'auto')")
    with pytest.raises(AggregationError, match=exactly(reference)):
        get_backend("reference", torch.device("cpu"))


def test_without_numba_auto_takes_torch_and_numba_names_the_extra(monkeypatch):
    layout, params, updates = make_round("mlp", "fedbrb")
    monkeypatch.setitem(sys.modules, "numba", None)  # as if numba were not installed
    index_runs.runs_kernel.cache_clear()
    try:
        expected = aggregate(params, layout, updates, RULES["lam0.3"])
        for given in (updates, batched(updates)):  # stacks of one client and of several (runs of many rows)
            res = aggregate(params, layout, given, RULES["lam0.3"], backend="auto")
            assert res.backend == "torch" and index_runs.runs_kernel() is index_runs.runs_of_arrays
            assert sorted(res.included) == sorted(expected.included)
            for name in layout.names:
                assert torch.allclose(res.params[name], expected.params[name], atol=1e-5), name
        missing = ("aggregation backend 'numba' is not available: the numba aggregation backend needs the 'numba' "
                   "extra: pip install 'fedbrb-fast[numba]'")
        with pytest.raises(AggregationError, match=exactly(missing)):
            aggregate(params, layout, updates, RULES["lam0.3"], backend="numba")
    finally:
        index_runs.runs_kernel.cache_clear()


def test_error_against_an_exact_float64_aggregate_is_bounded():
    """Sums of w * theta in float32 cancel C * p at the end: the result's error stays within a few
    float32 ulps of the parameters; float64 sums are as accurate as the float32 reference."""
    layout, params, updates = make_round("mlp", "fedrolex", widths=(0.25,) * 100)
    g = torch.Generator().manual_seed(3)
    updates = [ClientUpdate(u.client, u.weight, u.indices, {k: v + 1e-3 * torch.randn(v.shape, generator=g)
                                                            for k, v in extract(params, layout, u.indices).items()})
               for u in updates]
    rule = RULES["lam0.3"]
    exact = aggregate({k: v.double() for k, v in params.items()}, layout,
                      [ClientUpdate(u.client, u.weight, u.indices, {k: v.double() for k, v in u.params.items()})
                       for u in updates], rule).params
    fp32_reference = aggregate(params, layout, updates, rule).params
    fp32_sums = aggregate(params, layout, updates, rule, backend="numba").params
    acc = Accumulator(params, layout, rule, backend="numba", dtype=torch.float64)
    acc.add(updates)
    fp64_sums = acc.finalize().params
    for name, value in exact.items():
        scale = float(params[name].abs().max())
        reference_error = float((fp32_reference[name].double() - value).abs().max())
        assert float((fp32_sums[name].double() - value).abs().max()) <= 4e-7 * scale, name
        assert float((fp64_sums[name].double() - value).abs().max()) <= max(1.5 * reference_error, 1e-7 * scale), name
