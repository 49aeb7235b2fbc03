import math

import pytest
import torch

from fedbrb_fast.aggregation import (
    AggregationError,
    AggregationOverflow,
    AggregationRule,
    ClientUpdate,
    aggregate,
    own_update_share,
    rule_for_method,
)
from fedbrb_fast.models.layout import ModelLayout, ParamSpec, extract
from fedbrb_fast.plans import make_round_plans

# One group of 4 channels, K = 2 (B = 2): W [4, 3] sliced on its out-axis, bias [4].
LAYOUT = ModelLayout((4,), (ParamSpec("w", (4, 3), (0, None)), ParamSpec("b", (4,), (0,))))


def update(client, weight, rows, w_value, b_value, masks=None):
    idx = (torch.tensor(rows),)
    return ClientUpdate(client, weight, idx, {"w": torch.full((len(rows), 3), float(w_value)),
                                              "b": torch.full((len(rows),), float(b_value))}, masks or {})


def zeros():
    return {"w": torch.zeros(4, 3), "b": torch.zeros(4)}


def test_overlap_average_hand_computed():
    res = aggregate(
        zeros(), LAYOUT, [update(0, 1, [0, 1], 1, 1), update(1, 3, [1, 2], 2, 2)], AggregationRule("overlap")
    )
    assert res.params["w"][:, 0].tolist() == [1.0, 1.75, 2.0, 0.0]
    assert res.params["b"].tolist() == [1.0, 1.75, 2.0, 0.0]
    assert res.included == [0, 1] and res.excluded == {}


def test_uncovered_elements_keep_their_value():
    p = {"w": torch.arange(12.0).view(4, 3), "b": torch.tensor([5.0, 6.0, 7.0, 8.0])}
    res = aggregate(p, LAYOUT, [update(0, 1, [2], 0, 0)], AggregationRule("overlap"))
    assert torch.equal(res.params["w"][[0, 1, 3]], p["w"][[0, 1, 3]]) and res.params["b"][3] == 8.0


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_weighted_broadcast_hand_computed(lam):
    p = {"w": torch.full((4, 3), 10.0), "b": torch.full((4,), 10.0)}
    # client 0: block 0, delta +1, weight 1; client 1: block 1, delta +2, weight 3.
    ups = [update(0, 1, [0, 1], 11, 11), update(1, 3, [2, 3], 12, 12)]
    res = aggregate(p, LAYOUT, ups, AggregationRule("broadcast", lam=lam, num_blocks=2))
    s, w = 1 * 1 + 3 * 2, 4  # broadcast pool over both tiles
    row0 = ((1 - lam) * 1 + lam * s) / ((1 - lam) * 1 + lam * w)
    row2 = ((1 - lam) * 6 + lam * s) / ((1 - lam) * 3 + lam * w)
    expected = torch.tensor([row0, row0, row2, row2]) + 10
    assert torch.allclose(res.params["b"], expected)
    assert torch.allclose(res.params["w"], expected.unsqueeze(1).expand(4, 3))


@pytest.mark.parametrize("lam, tiles, expected", [
    (0.5, 64, 1 / 65),  # docs/algorithm.md#aggregation: a hidden-to-hidden weight at K = 8
    (0.5, 256, 1 / 257),  # K = 16
    (0.1, 64, 9 / 73),  # 0.9 / (0.9 + 6.4)
    (0.01, 64, 99 / 163),
    (0.0, 64, 1.0),  # block-wise rolling alone keeps all of it
    (1.0, 64, 0.0),  # every tile gets the broadcast mean
    (0.5, 1, 0.5),  # one tile: the broadcast mean is its own update, so it keeps all of it in the end
])
def test_own_update_share_by_hand(lam, tiles, expected):
    assert own_update_share(lam, tiles) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("lam, tiles", [(-0.1, 64), (1.5, 64), (0.5, 0)])
def test_own_update_share_refuses_what_is_not_a_broadcast(lam, tiles):
    with pytest.raises(AggregationError, match="lam must lie|num_tiles"):
        own_update_share(lam, tiles)


@pytest.mark.parametrize("lam", [0.0, 0.01, 0.1, 0.5, 1.0])
def test_own_update_share_is_what_the_broadcast_rule_leaves_a_tile(lam):
    """Every tile of an 8x8-tiled hidden-to-hidden weight trained once, equal weights, updates that sum
    to zero (so the broadcast mean is zero): each tile moves by exactly the share of its own update."""
    k = 8
    layout = ModelLayout((k, k), (ParamSpec("w", (k, k), (0, 1)),))
    deltas = torch.randn(k, k, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    deltas -= deltas.mean()
    ups = [ClientUpdate(i * k + j, 1.0, (torch.tensor([i]), torch.tensor([j])), {"w": deltas[i, j].view(1, 1)})
           for i in range(k) for j in range(k)]
    res = aggregate({"w": torch.zeros(k, k, dtype=torch.float64)}, layout, ups,
                    AggregationRule("broadcast", lam=lam, num_blocks=k), backend="reference")
    assert torch.allclose(res.params["w"], own_update_share(lam, k * k) * deltas, atol=1e-12)


def test_broadcast_lam_one_gives_every_tile_the_same_update():
    torch.manual_seed(0)
    p = {"w": torch.randn(4, 3), "b": torch.randn(4)}
    ups = [
        ClientUpdate(i, float(i + 1), (torch.tensor(r),), {"w": torch.randn(2, 3), "b": torch.randn(2)})
        for i, r in enumerate([[0, 1], [2, 3], [0, 1]])
    ]
    res = aggregate(p, LAYOUT, ups, AggregationRule("broadcast", lam=1.0, num_blocks=2))
    step = res.params["w"] - p["w"]
    assert torch.allclose(step[0:2], step[2:4], atol=1e-6)
    step_b = res.params["b"] - p["b"]
    assert torch.allclose(step_b[0:2], step_b[2:4], atol=1e-6)


def test_broadcast_reaches_tiles_no_client_trained():
    p = zeros()
    res = aggregate(p, LAYOUT, [update(0, 1, [0, 1], 1, 1)], AggregationRule("broadcast", lam=0.25, num_blocks=2))
    assert torch.allclose(res.params["b"], torch.ones(4))  # tile 1 gets the pool: 0.25*1/(0.25*1)
    res0 = aggregate(p, LAYOUT, [update(0, 1, [0, 1], 1, 1)], AggregationRule("broadcast", lam=0.0, num_blocks=2))
    assert res0.params["b"].tolist() == [1.0, 1.0, 0.0, 0.0]


def mlp_layout():
    from fedbrb_fast.models import MLP

    return MLP(6, [8, 12], 5, norm="bn").layout


def random_round(method, seed=0, k=4, clients=7):
    layout = mlp_layout()
    g = torch.Generator().manual_seed(seed)
    p = {s.name: torch.randn(s.shape, generator=g) for s in layout.params}
    widths = [0.25, 0.5, 0.25, 0.75, 0.25, 0.5, 0.25][:clients]
    plans = make_round_plans(
        method, 3, list(range(clients)), widths, group_sizes=layout.group_sizes, num_blocks=k, seed=seed
    )
    ups = []
    for pl in plans:
        sub = extract(p, layout, pl.indices)
        ups.append(
            ClientUpdate(
                pl.client,
                float(torch.randint(1, 50, (1,), generator=g)),
                pl.indices,
                {n: t + 0.1 * torch.randn(t.shape, generator=g) for n, t in sub.items()},
            )
        )
    return layout, p, ups


@pytest.mark.parametrize("method", ["fedbrb", "fedrolex", "fd", "heterofl"])
def test_broadcast_with_lam_zero_equals_overlap_averaging(method):
    layout, p, ups = random_round(method)
    a = aggregate(p, layout, ups, AggregationRule("overlap"))
    b = aggregate(p, layout, ups, AggregationRule("broadcast", lam=0.0, num_blocks=4))
    for n in layout.names:
        assert torch.allclose(a.params[n], b.params[n], atol=1e-5), n


def test_aggregate_does_not_modify_its_input():
    layout, p, ups = random_round("fedbrb")
    before = {k: v.clone() for k, v in p.items()}
    aggregate(p, layout, ups, AggregationRule("broadcast", lam=0.5, num_blocks=4))
    assert all(torch.equal(before[k], p[k]) for k in p)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_update_is_excluded_and_reported(bad):
    layout, p, ups = random_round("fedbrb")
    poisoned = dict(ups[2].params)
    poisoned["hidden1.weight"] = poisoned["hidden1.weight"].clone()
    poisoned["hidden1.weight"][0, 0] = bad
    ups_bad = list(ups)
    ups_bad[2] = ClientUpdate(ups[2].client, ups[2].weight, ups[2].indices, poisoned)
    rule = AggregationRule("broadcast", lam=0.5, num_blocks=4)
    res = aggregate(p, layout, ups_bad, rule)
    clean = aggregate(p, layout, [u for i, u in enumerate(ups) if i != 2], rule)
    assert set(res.excluded) == {ups[2].client} and "hidden1.weight" in res.excluded[ups[2].client]
    assert ups[2].client not in res.included
    for n in layout.names:
        assert torch.isfinite(res.params[n]).all()
        assert torch.equal(res.params[n], clean.params[n])


def test_all_updates_excluded_leaves_model_unchanged():
    res = aggregate(zeros(), LAYOUT, [update(0, 1, [0, 1], float("nan"), 0)], AggregationRule("overlap"))
    assert res.included == [] and torch.equal(res.params["w"], torch.zeros(4, 3))
    assert (
        aggregate(zeros(), LAYOUT, [], AggregationRule("broadcast", lam=0.5, num_blocks=2)).params["b"].tolist()
        == [0.0] * 4
    )


@pytest.mark.parametrize("backend", ["reference", "torch", "numba"])
@pytest.mark.parametrize("rule", [AggregationRule("overlap"), AggregationRule("broadcast", lam=0.5, num_blocks=2)])
def test_finite_updates_whose_sums_overflow_are_refused(backend, rule):
    """3.4e8 x -1e30 is past float32's range: an infinite global model must not come out."""
    p = {"w": torch.randn(4, 3), "b": torch.randn(4)}
    before = {k: v.clone() for k, v in p.items()}
    ups = [update(0, 340282352.0, [0, 1], 0.5, -1e30), update(1, 1.0, [2, 3], 0.5, 0.5)]
    with pytest.raises(AggregationOverflow, match="global b: the weighted sums overflowed"):
        aggregate(p, LAYOUT, ups, rule, backend=backend)
    assert all(torch.equal(before[k], p[k]) for k in p)
    p["b"][0] = float("inf")  # a non-finite global model is not blamed on the sums
    res = aggregate(p, LAYOUT, [update(1, 1.0, [2, 3], 0.5, 0.5)], rule, backend=backend)
    assert res.included == [1]


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_a_cast_to_half_that_overflows_is_refused(backend):
    """Finite float32 sums whose float16 result is past 65504: row 2's delta of 120000 is
    broadcast (lam = 1) onto row 0, which already holds 60000."""
    p = {"w": torch.zeros(4, 3, dtype=torch.float16), "b": torch.tensor([6e4, 0, -6e4, 0], dtype=torch.float16)}
    up = ClientUpdate(
        0,
        1.0,
        (torch.tensor([2, 3]),),
        {"w": torch.zeros(2, 3, dtype=torch.float16), "b": torch.tensor([6e4, 0], dtype=torch.float16)},
    )
    with pytest.raises(AggregationOverflow, match="global b"):
        aggregate(p, LAYOUT, [up], AggregationRule("broadcast", lam=1.0, num_blocks=2), backend=backend)


def test_label_mask_rows_do_not_enter_aggregation():
    p = zeros()
    m = {"w": torch.tensor([[1.0], [0.0]]), "b": torch.tensor([1.0, 0.0])}
    res = aggregate(p, LAYOUT, [update(0, 1, [0, 1], 4, 4, m), update(1, 1, [1, 2], 2, 2)], AggregationRule("overlap"))
    assert res.params["b"].tolist() == [4.0, 2.0, 2.0, 0.0]  # row 1 only from client 1


def test_zero_weight_clients_change_nothing():
    res = aggregate(
        zeros(), LAYOUT, [update(0, 0.0, [0, 1], 4, 4)], AggregationRule("broadcast", lam=0.5, num_blocks=2)
    )
    assert torch.equal(res.params["w"], torch.zeros(4, 3))


BAD_CASES = {
    "shape": (
        lambda: ClientUpdate(0, 1.0, (torch.tensor([0, 1]),), {"w": torch.zeros(3, 3), "b": torch.zeros(2)}),
        "shape",
    ),
    "index out of range": (lambda: update(0, 1, [3, 4], 1, 1), "outside"),
    "negative index": (lambda: update(0, 1, [-1, 0], 1, 1), "outside"),
    "repeated index": (lambda: update(0, 1, [1, 1], 1, 1), "repeats"),
    "float index": (
        lambda: ClientUpdate(0, 1.0, (torch.tensor([0.0, 1.0]),), {"w": torch.zeros(2, 3), "b": torch.zeros(2)}),
        "integer",
    ),
    "negative weight": (lambda: update(0, -1.0, [0, 1], 1, 1), "weight"),
    "nan weight": (lambda: update(0, math.nan, [0, 1], 1, 1), "weight"),
    "inf weight": (lambda: update(0, math.inf, [0, 1], 1, 1), "weight"),
    "missing tensor": (lambda: ClientUpdate(0, 1.0, (torch.tensor([0, 1]),), {"w": torch.zeros(2, 3)}), "missing"),
    "unknown tensor": (
        lambda: ClientUpdate(
            0, 1.0, (torch.tensor([0, 1]),), {"w": torch.zeros(2, 3), "b": torch.zeros(2), "x": torch.zeros(1)}
        ),
        "unknown",
    ),
    "wrong group count": (
        lambda: ClientUpdate(
            0, 1.0, (torch.tensor([0]), torch.tensor([0])), {"w": torch.zeros(1, 3), "b": torch.zeros(1)}
        ),
        "index sets",
    ),
    "bad mask": (lambda: update(0, 1, [0, 1], 1, 1, {"b": torch.ones(3)}), "mask"),
    "negative mask": (lambda: update(0, 1, [0, 1], 1, 1, {"b": -torch.ones(2)}), "mask"),
    "integer tensor": (
        lambda: ClientUpdate(
            0, 1.0, (torch.tensor([0, 1]),), {"w": torch.zeros(2, 3, dtype=torch.int64), "b": torch.zeros(2)}
        ),
        "floating",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_raises_and_leaves_model_unchanged(case):
    make, match = BAD_CASES[case]
    p = {"w": torch.randn(4, 3), "b": torch.randn(4)}
    before = {k: v.clone() for k, v in p.items()}
    good = update(7, 1, [2, 3], 1, 1)
    with pytest.raises(AggregationError, match=match):
        aggregate(p, LAYOUT, [good, make()], AggregationRule("broadcast", lam=0.5, num_blocks=2))
    assert all(torch.equal(before[k], p[k]) for k in p)


def test_duplicate_client_and_bad_rules():
    with pytest.raises(AggregationError, match="more than one"):
        aggregate(zeros(), LAYOUT, [update(0, 1, [0], 1, 1), update(0, 1, [1], 1, 1)], AggregationRule("overlap"))
    with pytest.raises(AggregationError, match="lam"):
        AggregationRule("broadcast", lam=1.5, num_blocks=2)
    with pytest.raises(AggregationError, match="unknown aggregation rule"):
        AggregationRule("median")
    with pytest.raises(AggregationError, match="blocks"):
        aggregate(zeros(), LAYOUT, [update(0, 1, [0], 1, 1)], AggregationRule("broadcast", lam=0.5, num_blocks=3))
    with pytest.raises(AggregationError, match="global tensor"):
        aggregate({"w": torch.zeros(4, 2), "b": torch.zeros(4)}, LAYOUT, [], AggregationRule("overlap"))


def test_rule_for_method():
    assert rule_for_method("fedbrb", 0.3, 8) == AggregationRule("broadcast", 0.3, 8)
    for m in ("fedrolex", "heterofl", "fd", "fedavg", "fedavg_small"):
        assert rule_for_method(m, 0.3, 8).kind == "overlap"


def test_conv_weights_broadcast_over_both_sliced_axes():
    from fedbrb_fast.models import CNN

    layout = CNN(1, [4, 8], 3, norm="none").layout
    p = {s.name: torch.zeros(s.shape) for s in layout.params}
    plans = make_round_plans("fedbrb", 0, [0], [0.5], group_sizes=layout.group_sizes, num_blocks=2, seed=0)
    sub = extract(p, layout, plans[0].indices)
    up = ClientUpdate(0, 1.0, plans[0].indices, {n: t + 1 for n, t in sub.items()})
    res = aggregate(p, layout, [up], AggregationRule("broadcast", lam=1.0, num_blocks=2))
    for n in layout.names:
        assert torch.allclose(res.params[n], torch.ones_like(res.params[n])), n  # every tile position reached


def test_stacked_batch_aggregates_like_its_single_updates():
    from fedbrb_fast.aggregation import ClientBatch

    layout, p, ups = random_round("fedbrb")
    same = [u for u in ups if len(u.indices[0]) == len(ups[0].indices[0])]
    batch = ClientBatch(
        tuple(u.client for u in same),
        torch.tensor([u.weight for u in same]),
        tuple(torch.stack([u.indices[g] for u in same]) for g in range(2)),
        {n: torch.stack([u.params[n] for u in same]) for n in layout.names},
    )
    rest = [u for u in ups if u not in same]
    rule = AggregationRule("broadcast", lam=0.4, num_blocks=4)
    a = aggregate(p, layout, [batch, *rest], rule)
    b = aggregate(p, layout, ups, rule)
    assert sorted(a.included) == sorted(b.included)
    for n in layout.names:
        assert torch.allclose(a.params[n], b.params[n], atol=1e-6)
