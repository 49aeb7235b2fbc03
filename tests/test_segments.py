"""Channel groups of R equal segments (attention heads; docs/algorithm.md#segments): the layout field,
every method's plans (one index set over a segment, applied in every segment), tile coverage over
R*K positions per segmented axis, and the reference aggregation rule's tile positions."""

from __future__ import annotations

import pytest
import torch
from segmented_family import HEAD_DIM, HEADS, HIDDEN, MODEL_DIM, segmented_layout
from test_aggregation_accumulator import spec_sums

from fedbrb_fast.aggregation import AggregationError, AggregationRule, ClientUpdate, aggregate
from fedbrb_fast.methods import METHODS, uneven_groups
from fedbrb_fast.models import ModelLayout, ParamSpec, extract
from fedbrb_fast.plans import (
    ClientPlan,
    fedbrb_indices,
    in_every_segment,
    layout_coverage,
    make_round_plans,
    shear_coefficients,
    tile_coverage,
    window,
)
from fedbrb_fast.plans.extraction import channel_count

LAYOUT = segmented_layout()
HEAD = 1  # the segmented group: R = HEADS segments of d = HEAD_DIM


# --- the layout field ----------------------------------------------------------------------------


def test_layout_reports_segments_segment_sizes_and_block_sizes():
    assert LAYOUT.group_sizes == (MODEL_DIM, HEADS * HEAD_DIM, HIDDEN)
    assert [LAYOUT.segments(g) for g in range(3)] == [1, HEADS, 1]
    assert [LAYOUT.segment_size(g) for g in range(3)] == [MODEL_DIM, HEAD_DIM, HIDDEN]
    assert LAYOUT.block_sizes(4) == (MODEL_DIM // 4, HEAD_DIM // 4, HIDDEN // 4)
    plain = ModelLayout((8,), (ParamSpec("b", (8,), (0,)),))
    assert plain.group_segments == () and plain.segments(0) == 1 and plain.segment_size(0) == 8


@pytest.mark.parametrize("segments,match", [
    ((1, 4), "2 segment counts for 3 groups"),
    ((1, 0, 1), "channel group 1 of size 32 does not hold 0 equal segments"),
    ((1, 5, 1), "channel group 1 of size 32 does not hold 5 equal segments"),
    ((3, 4, 1), "channel group 0 of size 16 does not hold 3 equal segments"),
])
def test_layout_refuses_segments_that_do_not_fit(segments, match):
    with pytest.raises(ValueError, match=match):
        ModelLayout(LAYOUT.group_sizes, LAYOUT.params, LAYOUT.classifier, group_segments=segments)


def test_block_rule_splits_each_segment():
    """d_g % K, not N_g % K: 4 heads of 6 (N = 24) split into K = 2 blocks but not into K = 4."""
    assert uneven_groups([16, 24], 4, (1, 4)) == [1] and uneven_groups([16, 24], 4) == []
    assert uneven_groups([16, 24], 2, (1, 4)) == []


# --- plans ---------------------------------------------------------------------------------------


def plans_of(method, round_idx=3, clients=(4, 0, 9, 2), widths=(0.25, 0.5, 0.25, 0.75), layout=LAYOUT, k=4):
    return make_round_plans(method, round_idx, list(clients), list(widths), group_sizes=layout.group_sizes,
                            num_blocks=k, seed=1, shear=shear_coefficients(layout),
                            group_segments=layout.group_segments)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_applies_one_index_set_inside_every_segment(method):
    for plan in plans_of(method):
        ix = plan.indices[HEAD]
        assert len(ix) == HEADS * channel_count(plan.width, HEAD_DIM)
        per_segment = ix.view(HEADS, -1)
        first = per_segment[0]
        assert ((first >= 0) & (first < HEAD_DIM)).all() and len(set(first.tolist())) == len(first)
        for r in range(HEADS):
            assert torch.equal(per_segment[r], r * HEAD_DIM + first), (method, r)
        assert torch.equal(ix, torch.cat([r * HEAD_DIM + first for r in range(HEADS)]))


def test_each_method_picks_its_channels_within_one_segment():
    k, t = 4, 5
    d = HEAD_DIM
    by_method = {m: plans_of(m, round_idx=t) for m in ("fedbrb", "fedrolex", "heterofl", "fedavg")}
    shear = shear_coefficients(LAYOUT)
    for plan in by_method["fedbrb"]:
        assert plan.roll is not None
        s = round(plan.width * k)
        expected = fedbrb_indices(plan.roll, plan.width, [d], k, "shear", [shear[HEAD]])[0]
        assert torch.equal(plan.indices[HEAD][: s * d // k], expected)  # blocks of B = d/K from b_g(u)
    for plan in by_method["fedrolex"]:
        rolling = window(t % d, channel_count(plan.width, d), d)
        assert torch.equal(plan.indices[HEAD], in_every_segment(rolling, HEADS, d))
    for plan in by_method["heterofl"]:
        assert torch.equal(plan.indices[HEAD], in_every_segment(torch.arange(channel_count(plan.width, d)), HEADS, d))
    for plan in by_method["fedavg"]:
        assert torch.equal(plan.indices[HEAD], torch.arange(HEADS * d))


@pytest.mark.parametrize("method", ["fedbrb", "fedrolex", "heterofl", "fedavg"])
def test_groups_without_segments_plan_as_before(method):
    """Only the segmented group changes: the others' index sets are those of a layout without segments."""
    plain = ModelLayout(LAYOUT.group_sizes, LAYOUT.params, LAYOUT.classifier)
    for a, b in zip(plans_of(method), plans_of(method, layout=plain), strict=True):
        for g in (0, 2):
            assert torch.equal(a.indices[g], b.indices[g])


def test_fd_draws_one_subset_per_round_client_and_group():
    a, b = plans_of("fd", round_idx=2), plans_of("fd", round_idx=2)
    assert all(torch.equal(x, y) for p, q in zip(a, b, strict=True) for x, y in zip(p.indices, q.indices, strict=True))
    firsts = {tuple(p.indices[HEAD][: len(p.indices[HEAD]) // HEADS].tolist()) for p in plans_of("fd", round_idx=7)}
    assert len(firsts) > 1  # clients draw their own subsets


def test_plans_refuse_segments_that_do_not_fit():
    with pytest.raises(ValueError, match="group_segments: 2 segment counts for 3 channel groups"):
        make_round_plans("heterofl", 0, [0], [0.5], group_sizes=[16, 32, 24], num_blocks=4, seed=0,
                         group_segments=(1, 4))
    with pytest.raises(ValueError, match="channel group 1 of size 32 does not hold 3 equal segments"):
        make_round_plans("heterofl", 0, [0], [0.5], group_sizes=[16, 32, 24], num_blocks=4, seed=0,
                         group_segments=(1, 3, 1))
    with pytest.raises(ValueError, match=r"fedbrb: channel group 1 of size 24 \(4 segments of 6\) does not split "
                                         r"into K = 4 blocks"):
        make_round_plans("fedbrb", 0, [0], [0.5], group_sizes=[16, 24, 24], num_blocks=4, seed=0,
                         group_segments=(1, 4, 1))
    plans = make_round_plans("fedrolex", 0, [0], [0.5], group_sizes=[16, 24, 24], num_blocks=4, seed=0,
                             group_segments=(1, 4, 1))  # only FedBRB needs blocks
    assert len(plans[0].indices[1]) == 4 * 3


# --- coverage ------------------------------------------------------------------------------------


def rolled(counters: range, width: float, k: int) -> list[ClientPlan]:
    shear = shear_coefficients(LAYOUT)
    return [ClientPlan(client=u, width=width, roll=u, indices=fedbrb_indices(
        u, width, LAYOUT.group_sizes, k, "shear", shear, LAYOUT.group_segments)) for u in counters]


def positions(k: int, spec: ParamSpec) -> tuple[int, ...]:
    return tuple(LAYOUT.segments(g) * k for _, g in spec.sliced_axes)


@pytest.mark.parametrize("k,start", [(2, 0), (2, 77), (4, 0), (4, 77), pytest.param(8, 5, marks=pytest.mark.slow)])
def test_width_beta_min_trains_every_tile_of_every_tensor_equally_often(k, start):
    """docs/algorithm.md#shear's coverage on a layout with segments: over K^3 consecutive roll counters
    (the layout is a star, not a chain) every one of the R*K (segment, block) positions per segmented
    axis is trained K^3 / K^d times."""
    assert shear_coefficients(LAYOUT) == ((0, 0), (1, 0), (1, 0))
    n = k**3
    cov = layout_coverage(rolled(range(start, start + n), 1 / k, k), LAYOUT, k)
    for spec in LAYOUT.params:
        d = len(spec.sliced_axes)
        assert torch.equal(cov.tiles[spec.name], torch.full(positions(k, spec), n // k**d)), spec.name
    assert cov.tiles["q.weight"].shape == (HEADS * k, k) and cov.tiles["o.weight"].shape == (k, HEADS * k)
    assert cov.notes() == []


def test_wider_clients_train_each_tile_s_to_the_d_times_as_often():
    k, s = 4, 2
    cov = layout_coverage(rolled(range(3, 3 + k**3), s / k, k), LAYOUT, k)
    for spec in LAYOUT.params:
        d = len(spec.sliced_axes)
        assert torch.equal(cov.tiles[spec.name], torch.full(positions(k, spec), s**d * k**3 // k**d)), spec.name


def test_tile_coverage_between_a_segmented_group_and_another():
    k = 4
    plans = rolled(range(k**3), 1 / k, k)
    q = tile_coverage(plans, HEAD, 0, HEADS * HEAD_DIM, MODEL_DIM, k, (HEADS, 1))
    assert q.shape == (HEADS * k, k) and torch.equal(q, layout_coverage(plans, LAYOUT, k).tiles["q.weight"])
    assert torch.equal(q, torch.full((HEADS * k, k), k))


def test_heterofl_trains_the_same_block_of_every_head():
    k = 4
    plans = plans_of("heterofl", widths=(1 / k,) * 4)
    cov = layout_coverage(plans, LAYOUT, k).tiles["q.bias"]
    assert cov.tolist() == [4 if b == 0 else 0 for _ in range(HEADS) for b in range(k)]


# --- the reference rule's tile positions -----------------------------------------------------------


def test_broadcast_pools_tiles_of_every_segment_by_hand():
    """One bias of 2 heads of 4 channels, K = 2: B = 2 and 4 tile positions. A client holding block 0 of
    both heads ([0, 1, 4, 5]) with deltas 1, 2, 3, 4 pools S = [1+3, 2+4], W = [2, 2]: at lam = 1 every
    position moves by the mean [2, 3] (tiles of N/K = 4 channels would leave channels 2, 3, 6, 7 alone)."""
    layout = ModelLayout((8,), (ParamSpec("b", (8,), (0,)),), group_segments=(2,))
    update = ClientUpdate(0, 1.0, (torch.tensor([0, 1, 4, 5]),), {"b": torch.tensor([1.0, 2, 3, 4])})
    got = aggregate({"b": torch.zeros(8)}, layout, [update], AggregationRule("broadcast", lam=1.0, num_blocks=2))
    assert got.params["b"].tolist() == [2.0, 3.0] * 4


@pytest.mark.parametrize("method", ["fedbrb", "fd"])
def test_reference_broadcast_is_the_spec_formula_over_segment_tiles(method, float64):
    from aggregation_rounds import make_round

    layout, params, updates = make_round("segmented", method, label_mask=True, widths=(0.25, 0.5, 0.25, 0.25))
    params = {k: v.double() for k, v in params.items()}
    updates = [ClientUpdate(u.client, u.weight, u.indices, {k: v.double() for k, v in u.params.items()}, u.masks)
               for u in updates]
    sums = spec_sums(params, layout, updates, AggregationRule("broadcast", lam=0.0, num_blocks=4))
    for lam in (0.0, 0.3, 1.0):
        got = aggregate(params, layout, updates, AggregationRule("broadcast", lam=lam, num_blocks=4)).params
        for spec in layout.params:
            a, c, s, w = sums[spec.name]
            reps = [a.shape[i] // s.shape[i] for i in range(a.dim())]
            num, den = (1 - lam) * a + lam * s.repeat(reps), (1 - lam) * c + lam * w.repeat(reps)
            p = params[spec.name]
            expected = torch.where(den > 0, p + num / den.clamp_min(1e-300), p)
            assert torch.allclose(got[spec.name], expected, atol=1e-12), (lam, spec.name)


def test_broadcast_refuses_segments_that_do_not_split_into_k_blocks():
    layout = ModelLayout((24,), (ParamSpec("b", (24,), (0,)),), group_segments=(4,))  # 4 heads of 6
    update = ClientUpdate(0, 1.0, (torch.arange(24),), {"b": torch.ones(24)})
    for backend in ("reference", "torch"):
        with pytest.raises(AggregationError, match=r"^channel group 0 of size 24 \(4 segments of 6\) does not split "
                                                   r"into 4 blocks per segment$"):
            aggregate({"b": torch.zeros(24)}, layout, [update], AggregationRule("broadcast", lam=0.5, num_blocks=4),
                      backend=backend)
    ok = aggregate({"b": torch.zeros(24)}, layout, [update], AggregationRule("broadcast", lam=0.5, num_blocks=3))
    assert torch.equal(ok.params["b"], torch.ones(24))
    overlap = aggregate({"b": torch.zeros(24)}, layout, [update], AggregationRule("overlap"))
    assert torch.equal(overlap.params["b"], torch.ones(24))


def test_extracted_sub_models_keep_every_head():
    plan = plans_of("fedbrb")[0]
    sub = extract({s.name: torch.randn(s.shape) for s in LAYOUT.params}, LAYOUT, plan.indices)
    per_head = channel_count(plan.width, HEAD_DIM)
    assert sub["q.weight"].shape == (HEADS * per_head, channel_count(plan.width, MODEL_DIM))
    assert sub["o.weight"].shape == (channel_count(plan.width, MODEL_DIM), HEADS * per_head)


# --- the suites' coverage heatmaps ----------------------------------------------------------------


def first_block_of_every_head(count: int, k: int = 2) -> torch.Tensor:
    tiles = torch.zeros(HEADS * k, k, dtype=torch.int64)
    tiles[::k, 0] = count
    return tiles


@pytest.mark.parametrize("method,expected", [
    ("fedbrb", torch.full((HEADS * 2, 2), 2)),  # 2 rounds x 4 clients = K^3 counters: each (segment, block) K times
    ("heterofl", first_block_of_every_head(8)),  # all 8 plans
])
def test_replayed_heatmap_has_a_tile_per_segment_and_block(monkeypatch, tmp_path, method, expected):
    import fedbrb_fast.experiments.coverage as coverage_module
    from fedbrb_fast.config import config_from_dict
    from fedbrb_fast.experiments.plots import plot_coverage

    monkeypatch.setattr(coverage_module, "planning_layout", lambda cfg: LAYOUT)
    cfg = config_from_dict({"rounds": 2, "data": {"dataset": "digits"},
                            "clients": {"num_clients": 12, "per_round": 4, "widths": ["1/2"]},
                            "method": {"name": method}})
    cov = coverage_module.replay_coverage(cfg)  # the weight between groups 1 (heads) and 0: q.weight
    assert torch.equal(cov.whole_tiles, expected)
    assert cov.elements.shape == (HEADS * HEAD_DIM, MODEL_DIM)
    assert torch.allclose(cov.tile_means(), expected.double())
    path = tmp_path / "coverage.png"
    plot_coverage({"tile_means": {method: cov.tile_means().tolist()}, "whole_tiles": {method: cov.whole_tiles.tolist()},
                   "in_group": 0, "out_group": 1}, [method], path, "segments")
    assert path.stat().st_size > 0


# --- engines -------------------------------------------------------------------------------------


@pytest.mark.slow  # vmap's first calls take seconds
@pytest.mark.parametrize("method", ["fedbrb", "fd"])
def test_the_batched_engine_trains_segmented_sub_models_as_the_reference_does(float64, method):
    from segmented_family import SegmentedNet
    from test_engine_batched import assert_rounds_match, make_data

    model = SegmentedNet(12, 5)
    assert_rounds_match(model, make_data((12,)), method, [0.25, 0.5, 0.25, 0.75, 0.25, 0.5, 0.25, 1.0],
                        shear=shear_coefficients(model.layout))


def segmented_simulation(monkeypatch, cfg_dict, width: str, head_dim: int, data=None, **changes):
    import math

    from segmented_family import SegmentedNet

    from fedbrb_fast.config import config_from_dict
    from fedbrb_fast.engines import Simulation, simulation

    def build(cfg, input_shape, num_classes):
        return SegmentedNet(math.prod(input_shape), num_classes, head_dim=head_dim)

    monkeypatch.setattr(simulation, "build_model", build)
    clients = {**cfg_dict["clients"], "widths": [width], "proportions": [1]}
    return Simulation(config_from_dict({**cfg_dict, "clients": clients, **changes}), data)


def test_a_simulation_refuses_segments_that_fedbrb_cannot_cut_before_any_work(monkeypatch, tiny_cfg_dict):
    from test_engine_batched import make_data

    with pytest.raises(ValueError, match=r"fedbrb: channel group 1 of size 24 \(4 segments of 6\) does not split "
                                         r"into K = 4 blocks"):
        segmented_simulation(monkeypatch, tiny_cfg_dict, "1/4", head_dim=6, data=make_data((12,)))


@pytest.mark.slow  # a whole round
@pytest.mark.parametrize("method", ["fedbrb", "fd"])
def test_a_simulation_round_on_segments(monkeypatch, tiny_cfg_dict, method):
    sim = segmented_simulation(monkeypatch, tiny_cfg_dict, "1/2", head_dim=6, rounds=1,
                               method={"name": method, "lam": 0.5})  # K = 2 splits heads of 6
    before = {k: v.clone() for k, v in sim.params.items()}
    record = sim.run_round()
    assert record.accuracy is not None and all(torch.isfinite(v).all() for v in sim.params.values())
    assert not torch.equal(before["q.weight"], sim.params["q.weight"])


@pytest.mark.parametrize("backend", ["torch", "numba"])
@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
def test_stacked_and_factored_segmented_updates_match_the_reference(backend, lam):
    """A ClientBatch whose o.weight [D, R*d] (sliced across heads on its columns) comes as factors, as
    the batched engine hands an input layer over: clients sharing a base slice share their index sets."""
    from aggregation_rounds import make_round

    from fedbrb_fast.aggregation import ClientBatch, FactoredStack

    layout, params, updates = make_round("segmented", "fedbrb", widths=(0.25,) * 6, label_mask=True)
    owner = torch.tensor([0, 0, 1, 1, 1, 2])  # runs of clients that share a slice
    first = [int((owner == u).nonzero()[0]) for u in range(3)]
    shared = [updates[first[int(u)]].indices for u in owner]
    g = torch.Generator().manual_seed(7)
    base = torch.stack([extract(params, layout, updates[i].indices)["o.weight"] for i in first])
    rows, cols = base.shape[1:]
    factored = FactoredStack(base, owner, torch.rand(6, generator=g) + 0.5, 0.1 * torch.randn(6, 3, rows, generator=g),
                             torch.randn(6, 3, cols, generator=g))
    dense = [ClientUpdate(u.client, u.weight, shared[i], {**u.params, "o.weight": factored[i]}, u.masks)
             for i, u in enumerate(updates)]
    batch = ClientBatch(
        clients=tuple(u.client for u in dense), weights=torch.tensor([u.weight for u in dense], dtype=torch.float64),
        indices=tuple(torch.stack([u.indices[k] for u in dense]) for k in range(3)),
        params={**{k: torch.stack([u.params[k] for u in dense]) for k in layout.names if k != "o.weight"},
                "o.weight": factored},
        masks={k: torch.stack([u.masks[k] for u in dense]) for k in dense[0].masks})
    rule = AggregationRule("broadcast", lam=lam, num_blocks=4)
    expected = aggregate(params, layout, dense, rule)
    got = aggregate(params, layout, [batch], rule, backend=backend)
    assert got.included == expected.included
    for name in layout.names:
        assert torch.allclose(got.params[name], expected.params[name], atol=1e-5), name
