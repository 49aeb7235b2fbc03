"""FedBRB's shear coefficients on chain and non-chain layouts, and every method's plans on a
PreResNet-18-shaped layout (docs/algorithm.md#adjacency, #shear, #model-families)."""

from __future__ import annotations

import math

import pytest
import torch

import fedbrb_fast.engines.simulation as simulation_module
from fedbrb_fast.config import config_from_dict
from fedbrb_fast.integrations.flower import FedBRB
from fedbrb_fast.models import CNN, MLP, ModelLayout, ParamSpec, extract
from fedbrb_fast.models.preresnet import preresnet_layout
from fedbrb_fast.plans import (
    ClientPlan,
    diagonal_only_tensors,
    fedbrb_indices,
    group_adjacency,
    is_chain,
    layout_coverage,
    make_round_plans,
    rolling_block_start,
    shear_coefficients,
)
from fedbrb_fast.plans.extraction import channel_count

KS = (2, 4, 8)


def layouts() -> dict[str, ModelLayout]:
    """Every group size divisible by 8, so K = 2, 4, 8 all apply. PreResNet-18 at 1/8 of [64, 128, 256, 512]."""
    return {
        "mlp": MLP(12, [16, 32, 8], 5, norm="bn").layout,
        "cnn": CNN(1, [8, 16, 32, 64], 10, norm="bn").layout,
        "preresnet18": preresnet_layout(3, [8, 16, 32, 64], 10, "bn"),
    }


def clique_layout(groups: int, n: int = 8) -> ModelLayout:
    """A weight between every pair of groups: the adjacency graph is the complete graph."""
    specs = [ParamSpec(f"w{a}_{b}.weight", (n, n), (b, a), "weight", fan_in=n)
             for a in range(groups) for b in range(a + 1, groups)]
    return ModelLayout((n,) * groups, tuple(specs))


def rolled(layout: ModelLayout, counters: range, width: float, k: int, schedule: str = "shear") -> list[ClientPlan]:
    shear = shear_coefficients(layout)
    return [ClientPlan(client=u, width=width, roll=u,
                       indices=fedbrb_indices(u, width, layout.group_sizes, k, schedule, shear)) for u in counters]


def period(layout: ModelLayout, k: int) -> int:
    """K^2 roll counters for chains, K^3 otherwise."""
    return k**2 if is_chain(group_adjacency(layout)) else k**3


# --- adjacency and coefficients ------------------------------------------------------------------


def test_chains_have_consecutive_adjacency_and_coefficients_g_0():
    for name in ("mlp", "cnn"):
        layout = layouts()[name]
        groups = len(layout.group_sizes)
        assert group_adjacency(layout) == {(g, g + 1) for g in range(groups - 1)}
        assert is_chain(group_adjacency(layout))
        assert shear_coefficients(layout) == tuple((g, 0) for g in range(groups))
    assert shear_coefficients(MLP(4, [8], 2).layout) == ((0, 0),)  # one group, nothing adjacent: a chain


def test_preresnet18_adjacency_and_colouring_by_hand():
    layout = layouts()["preresnet18"]
    # groups in network order: 0 stream0, 1-2 inner of stage 0, 3 inner of stage1.block0, 4 stream1, 5 inner of
    # stage1.block1, 6 inner of stage2.block0, 7 stream2, 8, 9 inner, 10 stream3, 11 inner of stage3.block1.
    assert layout.group_sizes == (8, 8, 8, 16, 16, 16, 32, 32, 32, 64, 64, 64)
    assert group_adjacency(layout) == {
        (0, 1), (0, 2), (0, 3), (3, 4), (0, 4),  # stage 0 blocks; stage1.block0 conv1, conv2, shortcut
        (4, 5), (4, 6), (6, 7), (4, 7),
        (7, 8), (7, 9), (9, 10), (7, 10),
        (10, 11),
    }
    assert not is_chain(group_adjacency(layout)) and diagonal_only_tensors(layout) == {}
    # greedy in network order over (0,0), (1,0), (0,1), (1,1): each shortcut triangle takes three colours
    assert shear_coefficients(layout) == (
        (0, 0), (1, 0), (1, 0), (1, 0), (0, 1), (0, 0), (0, 0), (1, 0), (0, 0), (0, 0), (0, 1), (0, 0))


@pytest.mark.parametrize("name", ["mlp", "cnn", "preresnet18", "clique4"])
@pytest.mark.parametrize("k", [*KS, 3, 5, 6])
def test_adjacent_groups_have_coprime_shear_differences(name, k):
    layout = clique_layout(4) if name == "clique4" else layouts()[name]
    shear = shear_coefficients(layout)
    for a, b in group_adjacency(layout):
        assert math.gcd(shear[a][0] - shear[b][0], shear[a][1] - shear[b][1], k) == 1, (a, b, shear[a], shear[b])


def test_rolling_block_start_hand_computed():
    # K = 3, u = 14: floor(u/K) = 4, floor(u/K^2) = 1
    assert [rolling_block_start(14, c, 3, "shear", e) for c, e in ((0, 0), (1, 0), (0, 1), (1, 1), (2, 1))] == \
        [2, 0, 0, 1, 2]
    assert {rolling_block_start(14, c, 3, "diagonal", e) for c, e in ((0, 0), (1, 0), (0, 1), (1, 1))} == {2}


def test_five_clique_is_refused_naming_the_groups():
    with pytest.raises(ValueError, match=r"channel group 4 is adjacent to groups \[0, 1, 2, 3\].*4 shear colours"):
        shear_coefficients(clique_layout(5))
    assert sorted(shear_coefficients(clique_layout(4))) == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_shear_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError, match=r"shear: 2 \(c_g, e_g\) pairs for 3 channel groups"):
        make_round_plans("fedbrb", 0, [0], [0.25], group_sizes=[8, 8, 8], num_blocks=4, seed=0,
                         shear=((0, 0), (1, 0)))


def test_chain_plans_with_the_layouts_coefficients_equal_the_default():
    layout = layouts()["mlp"]
    for t in range(5):
        default, explicit = (make_round_plans("fedbrb", t, [3, 1, 7, 5], [0.125, 0.25, 0.5, 0.125],
                                              group_sizes=layout.group_sizes, num_blocks=8, seed=0, shear=shear)
                             for shear in (None, shear_coefficients(layout)))
        assert [[i.tolist() for i in p.indices] for p in default] == [[i.tolist() for i in p.indices] for p in explicit]


# --- coverage ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mlp", "cnn", "preresnet18"])
@pytest.mark.parametrize("k,start", [(2, 0), (2, 77), (4, 0), (4, 77), pytest.param(8, 0, marks=pytest.mark.slow),
                                     pytest.param(8, 77, marks=pytest.mark.slow)])
def test_width_beta_min_trains_every_tile_equally_often_over_one_period(name, k, start):
    """Over K^3 consecutive counters (K^2 for chains) a tile on d sliced axes is trained period / K^d times."""
    layout = layouts()[name]
    n = period(layout, k)
    cov = layout_coverage(rolled(layout, range(start, start + n), 1 / k, k), layout, k)
    for spec in layout.params:
        d = len(spec.sliced_axes)
        assert torch.equal(cov.tiles[spec.name], torch.full((k,) * d, n // k**d)), spec.name
    assert cov.notes() == []


@pytest.mark.parametrize("k,s", [(4, 2), (4, 3), pytest.param(8, 2, marks=pytest.mark.slow),
                                 pytest.param(8, 4, marks=pytest.mark.slow)])
def test_wider_clients_train_every_preresnet_tile_s_to_the_d_times_as_often(k, s):
    layout = layouts()["preresnet18"]
    n = k**3
    cov = layout_coverage(rolled(layout, range(5, 5 + n), s / k, k), layout, k)
    for spec in layout.params:
        d = len(spec.sliced_axes)
        assert torch.equal(cov.tiles[spec.name], torch.full((k,) * d, n * s**d // k**d)), spec.name


@pytest.mark.parametrize("k", [2, 4])
def test_k_squared_counters_are_not_enough_off_a_chain(k):
    """The e_g term needs K^3 counters: over only K^2, PreResNet-18 leaves tiles untrained."""
    layout = layouts()["preresnet18"]
    cov = layout_coverage(rolled(layout, range(k * k), 1 / k, k), layout, k)
    assert any("never trained" in line for line in cov.notes())


@pytest.mark.parametrize("k", [2, 4])
def test_chain_coefficients_miss_tiles_on_preresnet18(k):
    """Why the colouring: with c_g = g, the shortcut from group 0 to group 4 has c difference 4, which
    shares a factor with every even K."""
    layout = layouts()["preresnet18"]
    chain = tuple((g, 0) for g in range(len(layout.group_sizes)))
    plans = [ClientPlan(client=u, width=1 / k, roll=u,
                        indices=fedbrb_indices(u, 1 / k, layout.group_sizes, k, "shear", chain)) for u in range(k**3)]
    cov = layout_coverage(plans, layout, k)
    assert (cov.tiles["stage1.block0.shortcut.weight"] == 0).any()


@pytest.mark.parametrize("name", ["mlp", "cnn", "preresnet18"])
@pytest.mark.parametrize("k", [2, 4])
def test_a_round_of_one_period_of_clients_trains_every_tile(name, k):
    layout = layouts()[name]
    for m in (period(layout, k), period(layout, k) + 3):
        for t in (0, 3):
            plans = make_round_plans("fedbrb", t, list(range(m)), [1 / k] * m, group_sizes=layout.group_sizes,
                                     num_blocks=k, seed=0, shear=shear_coefficients(layout))
            cov = layout_coverage(plans, layout, k)
            assert all(c.min() >= 1 for c in cov.tiles.values()), (m, t)


def test_clique4_is_covered_over_k_cubed_counters():
    k = 4
    layout = clique_layout(4)
    cov = layout_coverage(rolled(layout, range(3, 3 + k**3), 1 / k, k), layout, k)
    assert all(torch.equal(c, torch.full((k, k), k)) for c in cov.tiles.values())


def test_diagonal_ablation_on_preresnet18_trains_only_diagonal_tiles():
    k = 4
    layout = layouts()["preresnet18"]
    plans = make_round_plans("fedbrb", 2, list(range(k**3)), [1 / k] * k**3, group_sizes=layout.group_sizes,
                             num_blocks=k, seed=0, schedule="diagonal", shear=shear_coefficients(layout))
    cov = layout_coverage(plans, layout, k)
    for spec in layout.params:
        d = len(spec.sliced_axes)
        expected = torch.diag(torch.full((k,), k**2)) if d == 2 else torch.full((k,) * d, k**3 // k**d)
        assert torch.equal(cov.tiles[spec.name], expected), spec.name
    missed = [line for line in cov.notes() if "never trained" in line]
    assert len(missed) == sum(len(s.sliced_axes) == 2 for s in layout.params)


def test_diagonal_only_tensors_are_reported():
    k = 4
    base = MLP(6, [8, 8], 3).layout
    layout = ModelLayout(base.group_sizes, (*base.params, ParamSpec("mix.weight", (8, 8), (1, 1))))
    assert diagonal_only_tensors(layout) == {"mix.weight": 1}
    assert group_adjacency(layout) == group_adjacency(base)  # not an edge between two groups
    cov = layout_coverage(rolled(layout, range(k**2), 1 / k, k), layout, k)
    assert torch.equal(cov.tiles["mix.weight"], torch.diag(torch.full((k,), k)))
    assert cov.notes()[0].startswith("mix.weight: diagonal-only, sliced on both axes by channel group 1")
    assert "mix.weight: 12 of 16 tiles never trained whole" in cov.notes()
    # a client of s blocks trains the tiles whose two blocks both lie in its window
    wide = layout_coverage(rolled(layout, range(k**2), 2 / k, k), layout, k)
    near = torch.tensor([[min((i - j) % k, (j - i) % k) <= 1 for j in range(k)] for i in range(k)])
    assert torch.equal(wide.tiles["mix.weight"] > 0, near)


# --- the other methods on a non-chain layout ------------------------------------------------------


@pytest.mark.parametrize("method", ["fedrolex", "heterofl", "fd", "fedavg", "fedavg_small"])
def test_baseline_plans_slice_every_group_of_preresnet18(method):
    layout = layouts()["preresnet18"]
    params = {s.name: torch.randn(s.shape) for s in layout.params}
    widths = [0.125, 0.25, 0.5, 1.0]
    plans = make_round_plans(method, 3, [4, 0, 9, 2], widths, group_sizes=layout.group_sizes, num_blocks=8, seed=1,
                             shear=shear_coefficients(layout))
    for plan in plans:
        assert len(plan.indices) == len(layout.group_sizes)
        for idx, n in zip(plan.indices, layout.group_sizes, strict=True):
            assert len(idx) == channel_count(plan.width, n) and idx.unique().numel() == len(idx)
            assert 0 <= int(idx.min()) and int(idx.max()) < n
        sub = extract(params, layout, plan.indices)
        assert {k: tuple(v.shape) for k, v in sub.items()} == {s.name: layout.sub_shape(s, plan.indices)
                                                               for s in layout.params}


def test_fedrolex_rolls_every_preresnet18_group():
    layout = layouts()["preresnet18"]
    for t in range(0, 70, 7):
        (plan,) = make_round_plans("fedrolex", t, [0], [0.125], group_sizes=layout.group_sizes, num_blocks=8, seed=0)
        for idx, n in zip(plan.indices, layout.group_sizes, strict=True):
            assert idx.tolist() == [(t + i) % n for i in range(n // 8)]


# --- callers take the coefficients from the layout -----------------------------------------------


def small_cfg(method: str):
    return config_from_dict({"rounds": 1, "data": {"dataset": "digits"}, "model": {"hidden": [16, 8]},
                             "clients": {"num_clients": 6, "per_round": 4, "widths": ["1/4"]},
                             "method": {"name": method}})


class Planned(Exception):
    """Stops a round once its plans are made: the call is what these tests check, not the training."""


def test_simulation_plans_with_its_layouts_coefficients(monkeypatch):
    seen = []

    def recording(*args, **kwargs):
        seen.append(kwargs["shear"])
        raise Planned

    monkeypatch.setattr(simulation_module, "make_round_plans", recording)
    sim = simulation_module.Simulation(small_cfg("fedbrb"))
    assert sim.shear == shear_coefficients(sim.model.layout) == ((0, 0), (1, 0))
    sim.shear = ((1, 1), (0, 1))  # whatever the simulation holds is what the plans get
    with pytest.raises(Planned):
        sim.run_round()
    assert seen == [((1, 1), (0, 1))]


def test_simulation_refuses_a_layout_fedbrb_cannot_roll_before_any_round(monkeypatch):
    def clique_model(*args, **kwargs):
        model = MLP(64, [8], 10)
        model.layout = clique_layout(5)
        return model

    monkeypatch.setattr(simulation_module, "build_model", clique_model)
    with pytest.raises(ValueError, match="channel group 4 is adjacent"):
        simulation_module.Simulation(small_cfg("fedbrb"))
    assert simulation_module.Simulation(small_cfg("fedrolex")).shear is None  # only FedBRB rolls blocks


def test_flower_fedbrb_plans_with_its_layouts_coefficients():
    layout = layouts()["preresnet18"]
    strategy = FedBRB(layout, width=0.125, num_blocks=8)
    assert strategy.shear == shear_coefficients(layout)
    nodes = [21, 7, 13]
    strategy._numbering.ordered(None, nodes)  # type: ignore[arg-type]  # node-order numbering asks no grid
    got = strategy._plans(31, nodes)  # roll counters 90-92: both shear terms at work (K = 8)
    want = make_round_plans("fedbrb", 30, [strategy._numbering.index(n) for n in nodes], [0.125] * 3,
                            group_sizes=layout.group_sizes, num_blocks=8, seed=0, shear=shear_coefficients(layout))
    assert [[i.tolist() for i in p.indices] for p in got] == [[i.tolist() for i in p.indices] for p in want]
    with pytest.raises(ValueError, match="channel group 4 is adjacent"):
        FedBRB(clique_layout(5), width=0.125, num_blocks=8)
