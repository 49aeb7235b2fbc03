"""`method.init = "tiled"` (docs/algorithm.md#tiled-init): every tile of the global model starts
equal to its first block's, and FedBRB from there with lam = 1 is FedAvg on the small model."""

from __future__ import annotations

import pytest
import torch
from segmented_family import SegmentedNet

from fedbrb_fast.config import ConfigError, config_from_dict, config_to_toml
from fedbrb_fast.engines import Simulation, build_federated_data
from fedbrb_fast.models import MLP, build_model, initial_params, tile_first_block
from fedbrb_fast.models.layout import extract
from fedbrb_fast.models.transformer import Transformer


@pytest.fixture(scope="module")
def digits():
    """The data of tiny_cfg_dict (conftest), loaded once for the module."""
    return build_federated_data(config_from_dict({"data": {"dataset": "digits", "partition": "shards",
                                                           "shards_per_client": 2},
                                                  "clients": {"num_clients": 12, "per_round": 5}, "seed": 3}))


def _tiles(t: torch.Tensor, axes: list[tuple[int, int, int]], num_blocks: int) -> list[torch.Tensor]:
    """Every tile of `t`, given (axis, segments, segment size) per sliced axis."""
    tiles = [t]
    for axis, r, d in axes:
        b = d // num_blocks
        tiles = [x.narrow(axis, s * d + k * b, b) for x in tiles for s in range(r) for k in range(num_blocks)]
    return tiles


def _blocks_of_segment(t: torch.Tensor, axis: int, d: int, num_blocks: int, segment: int) -> list[torch.Tensor]:
    b = d // num_blocks
    return [t.narrow(axis, segment * d + k * b, b) for k in range(num_blocks)]


@pytest.mark.parametrize("family", [MLP(12, [16, 8], 5, norm="gn", norm_groups=2),
                                    SegmentedNet(), Transformer(11, layers=1, dim=16, heads=2, mlp=32,
                                                                   context=6)])
def test_every_tile_equals_the_first_block_inside_its_segment(family):
    k = 4 if not isinstance(family, MLP) else 8
    params = family.init(torch.Generator().manual_seed(0))
    tiled = tile_first_block(params, family.layout, k)
    layout = family.layout
    for spec in layout.params:
        t = tiled[spec.name]
        assert t.shape == params[spec.name].shape
        sliced = spec.sliced_axes
        if not sliced:
            assert torch.equal(t, params[spec.name])  # unsliced tensors are kept
            continue
        for axis, g in sliced:  # along each sliced axis, the K blocks of a segment are equal
            d = layout.segment_size(g)
            for s in range(layout.segments(g)):
                blocks = _blocks_of_segment(t, axis, d, k, s)
                assert all(torch.equal(blocks[0], x) for x in blocks[1:]), (spec.name, axis, s)
        # and the common tile is the original first block (of segment 0 on every axis)
        first = params[spec.name]
        for axis, g in sliced:
            first = first.narrow(axis, 0, layout.segment_size(g) // k)
        got = t
        for axis, g in sliced:
            got = got.narrow(axis, 0, layout.segment_size(g) // k)
        assert torch.equal(got, first)
    assert all(tiled[n].data_ptr() != params[n].data_ptr() for n in params)  # copies, never views


def test_segments_keep_their_own_first_block():
    family = SegmentedNet()
    params = family.init(torch.Generator().manual_seed(1))
    tiled = tile_first_block(params, family.layout, 2)
    layout = family.layout
    g = next(g for g in range(len(layout.group_sizes)) if layout.segments(g) > 1)
    spec = next(s for s in layout.params if [gg for _, gg in s.sliced_axes] == [g])  # q.bias: no other axis
    axis = next(a for a, gg in spec.sliced_axes if gg == g)
    d = layout.segment_size(g)
    heads = [_blocks_of_segment(tiled[spec.name], axis, d, 2, s)[0] for s in range(layout.segments(g))]
    originals = [_blocks_of_segment(params[spec.name], axis, d, 2, s)[0] for s in range(layout.segments(g))]
    assert all(torch.equal(h, o) for h, o in zip(heads, originals, strict=True))
    assert not torch.equal(heads[0], heads[1])  # each head keeps its own first block


def test_blocks_that_do_not_divide_are_refused():
    family = MLP(4, [6], 3)
    with pytest.raises(ValueError, match="hidden0.weight: group 0 has 6 channels per segment, not divisible by K = 4"):
        tile_first_block(family.init(torch.Generator().manual_seed(0)), family.layout, 4)


def test_the_option_is_fedbrb_only_and_unset_configs_are_unchanged(tiny_cfg_dict):
    with pytest.raises(ConfigError, match="method.init: 'tiled' is an option of fedbrb, not of 'heterofl'"):
        config_from_dict({**tiny_cfg_dict, "method": {"name": "heterofl", "init": "tiled"}})
    plain = config_from_dict(tiny_cfg_dict)
    assert "init" not in config_to_toml(plain)  # runs saved before the option still match their configs
    tiled = config_from_dict({**tiny_cfg_dict, "method": {"name": "fedbrb", "init": "tiled"}})
    assert 'init = "tiled"' in config_to_toml(tiled)


@pytest.mark.slow  # loads the digits data (about 2 s)
def test_simulation_starts_from_the_tiled_init(tiny_cfg_dict, digits):
    plain = config_from_dict(tiny_cfg_dict)
    tiled = config_from_dict({**tiny_cfg_dict, "method": {"name": "fedbrb", "init": "tiled"}})
    data = digits
    sim = Simulation(tiled, data)
    model = build_model(plain, data.input_shape, data.num_classes)
    expected = tile_first_block(initial_params(plain, model), model.layout, plain.num_blocks)
    assert all(torch.equal(sim.params[n], expected[n]) for n in expected)
    assert all(torch.equal(Simulation(plain, data).params[n], initial_params(plain, model)[n]) for n in expected)


@pytest.mark.slow
@pytest.mark.parametrize("norm,engine", [("none", "reference"), ("gn", "batched")])
def test_fedbrb_with_full_broadcast_from_tiled_init_is_fedavg_on_the_small_model(tiny_cfg_dict, digits, norm,
                                                                                  engine):
    """lam = 1 gives every tile the mean of all client updates, so tiles stay equal and the common
    tile follows fedavg_small started from it (scaler off: the sub-model computes what the small one does)."""
    base = {**tiny_cfg_dict, "rounds": 3,
            "model": {"arch": "mlp", "hidden": [32, 16], "norm": norm, "norm_groups": 2, "scaler": False},
            "clients": {"num_clients": 12, "per_round": 5, "widths": ["1/4"]}, "train": {
                **tiny_cfg_dict["train"], "engine": engine}}
    brb = config_from_dict({**base, "method": {"name": "fedbrb", "lam": 1.0, "init": "tiled"}})
    small = config_from_dict({**base, "method": {"name": "fedavg_small"}})
    data = digits
    sim_brb, sim_small = Simulation(brb, data), Simulation(small, data)
    block0 = tuple(torch.arange(n // brb.num_blocks) for n in sim_brb.model.layout.group_sizes)
    sim_small.params = extract(sim_brb.params, sim_brb.model.layout, block0)
    for _ in range(brb.rounds):
        rb, rs = sim_brb.run_round(), sim_small.run_round()
        assert rb.train_loss == pytest.approx(rs.train_loss, rel=1e-4)
    layout = sim_brb.model.layout
    assert all(torch.allclose(a, b, atol=1e-5)
               for a, b in zip(extract(sim_brb.params, layout, block0).values(), sim_small.params.values(),
                               strict=True))
    for spec in layout.params:  # still K x K copies of one sub-model
        axes = [(a, 1, spec.shape[a]) for a, _ in spec.sliced_axes]
        tiles = _tiles(sim_brb.params[spec.name], axes, brb.num_blocks)
        assert all(torch.allclose(tiles[0], t, atol=1e-5) for t in tiles[1:]), spec.name
