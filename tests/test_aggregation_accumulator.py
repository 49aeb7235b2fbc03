"""The streaming accumulator: clients one at a time, partial sums A, C, S, W as
docs/algorithm.md#aggregation defines them, merging accumulators (what the distributed engine all-reduces)."""

import pytest
import torch
from aggregation_rounds import NUM_BLOCKS, assert_same_result, batched, make_round, poisoned

from fedbrb_fast.aggregation import Accumulator, AggregationError, AggregationRule, aggregate
from fedbrb_fast.models.layout import gather_tensor

BROADCAST = AggregationRule("broadcast", lam=0.3, num_blocks=NUM_BLOCKS)
OVERLAP = AggregationRule("overlap")


def spec_sums(params, layout, updates, rule):
    """A, C, S, W straight from docs/algorithm.md#aggregation, one client and element at a time."""
    out = {}
    for spec in layout.params:
        p = params[spec.name]
        a, c = torch.zeros_like(p, dtype=torch.float64), torch.zeros_like(p, dtype=torch.float64)
        # a sliced axis has K tile positions per segment of its group (docs/algorithm.md#segments)
        tile = [n // (NUM_BLOCKS * layout.segments(g)) if g is not None else n
                for n, g in zip(spec.shape, spec.axis_groups, strict=True)]
        s, w = torch.zeros(tile, dtype=torch.float64), torch.zeros(tile, dtype=torch.float64)
        for u in updates:
            theta = u.params[spec.name].double()
            value = theta - gather_tensor(p, spec, u.indices).double() if rule.kind == "broadcast" else theta
            weight = torch.full_like(theta, u.weight) * u.masks.get(spec.name, torch.ones(())).double()
            axes = [u.indices[g] if g is not None else torch.arange(n)
                    for n, g in zip(spec.shape, spec.axis_groups, strict=True)]
            for local in torch.cartesian_prod(*[torch.arange(len(ix)) for ix in axes]).reshape(-1, len(axes)).tolist():
                e = tuple(int(ix[i]) for ix, i in zip(axes, local, strict=True))
                o = tuple(i % t for i, t in zip(e, tile, strict=True))
                a[e] += weight[tuple(local)] * value[tuple(local)]
                c[e] += weight[tuple(local)]
                s[o] += weight[tuple(local)] * value[tuple(local)]
                w[o] += weight[tuple(local)]
        out[spec.name] = (a, c, s, w)
    return out


@pytest.mark.parametrize("rule", [BROADCAST, OVERLAP])
@pytest.mark.parametrize("arch", ["mlp", "cnn", "segmented"])
def test_partial_sums_are_the_spec_sums(arch, rule):
    layout, params, updates = make_round(arch, "fedrolex", label_mask=True)
    acc = Accumulator(params, layout, rule, backend="numba")
    acc.add(batched(updates))
    expected = spec_sums(params, layout, updates, rule)
    for name, sums in acc.partial_sums().items():
        a, c, s, w = expected[name]
        assert torch.allclose(sums.a.double(), a, atol=1e-4) and torch.allclose(sums.c.double(), c, atol=1e-4)
        if rule.kind == "overlap":
            assert sums.s is None and sums.w is None
        else:
            assert sums.s is not None and sums.w is not None
            assert torch.allclose(sums.s.double(), s, atol=1e-4) and torch.allclose(sums.w.double(), w, atol=1e-4)


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_clients_one_at_a_time_equal_one_aggregate(backend):
    layout, params, updates = make_round("cnn", "fedbrb", label_mask=True, zero_weight=True)
    updates[5] = poisoned(updates[5], "hidden1.weight", float("nan"))
    acc = Accumulator(params, layout, BROADCAST, backend=backend)
    for u in updates:
        acc.add(u)
    assert_same_result(acc.finalize(), aggregate(params, layout, updates, BROADCAST))


@pytest.mark.parametrize("parts", [2, 3])
@pytest.mark.parametrize("rule", [BROADCAST, OVERLAP])
def test_split_accumulators_merge_to_one(parts, rule):
    layout, params, updates = make_round("mlp", "fd", label_mask=True)
    updates[3] = poisoned(updates[3], "out.weight", float("inf"))
    whole = Accumulator(params, layout, rule, backend="numba")
    whole.add(updates)
    workers = [Accumulator(params, layout, rule, backend="numba") for _ in range(parts)]
    for i, worker in enumerate(workers):
        worker.add(batched(updates[i::parts]))
    summed = workers[0].partial_sums()
    for worker in workers[1:]:
        summed = {name: summed[name] + ps for name, ps in worker.partial_sums().items()}
    for name, ps in whole.partial_sums().items():
        for got, expected in zip((summed[name].a, summed[name].c, summed[name].s, summed[name].w),
                                 (ps.a, ps.c, ps.s, ps.w), strict=True):
            if got is None or expected is None:
                assert got is None and expected is None, name
            else:
                assert torch.allclose(got, expected, atol=1e-4), name
    for worker in workers[1:]:
        workers[0].merge(worker)
    merged, single = workers[0].finalize(), whole.finalize()
    assert sorted(merged.included) == sorted(single.included) and merged.excluded == single.excluded
    for name in layout.names:
        assert torch.allclose(merged.params[name], single.params[name], atol=1e-5), name


def test_a_leader_finalizes_all_reduced_partial_sums():
    layout, params, updates = make_round("cnn", "fedbrb")
    workers = [Accumulator(params, layout, BROADCAST, backend="torch") for _ in range(2)]
    workers[0].add(updates[:4])
    workers[1].add(updates[4:])
    reduced = {name: ps + workers[1].partial_sums()[name] for name, ps in workers[0].partial_sums().items()}
    leader = Accumulator(params, layout, BROADCAST, backend="numba")
    leader.add_partial_sums(reduced)
    expected = aggregate(params, layout, updates, BROADCAST)
    for name in layout.names:
        assert torch.allclose(leader.finalize().params[name], expected.params[name], atol=1e-5), name
    with pytest.raises(AggregationError, match="partial sums"):
        leader.add_partial_sums({name: ps for name, ps in list(reduced.items())[1:]})


def test_duplicates_and_mismatched_merges_are_refused():
    layout, params, updates = make_round("mlp", "heterofl")
    acc = Accumulator(params, layout, OVERLAP, backend="numba")
    acc.add(updates[:3])
    with pytest.raises(AggregationError, match=f"client {updates[1].client}: sent more than one update"):
        acc.add(updates[1])
    other = Accumulator(params, layout, OVERLAP, backend="numba")
    other.add(updates[2:5])
    with pytest.raises(AggregationError, match="more than one update"):
        acc.merge(other)
    with pytest.raises(AggregationError, match="same layout and rule"):
        acc.merge(Accumulator(params, layout, BROADCAST, backend="numba"))
    shifted = {k: v + 1 for k, v in params.items()}
    with pytest.raises(AggregationError, match="different global parameters"):
        acc.merge(Accumulator(shifted, layout, OVERLAP, backend="numba"))
    with pytest.raises(AggregationError, match="float32 or float64"):
        Accumulator(params, layout, OVERLAP, dtype=torch.float16)
