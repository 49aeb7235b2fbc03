"""Property-based hostile input: whatever arrives, a clear error naming the problem or a valid
result, and no state changed."""

import math

import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fedbrb_fast.aggregation import AggregationError, AggregationRule, ClientUpdate, aggregate
from fedbrb_fast.config import ConfigError, ExperimentConfig, config_from_dict, load_config
from fedbrb_fast.models.layout import ModelLayout, ParamSpec

SECTIONS = {
    "data": ["dataset", "partition", "dirichlet_alpha", "shards_per_client", "test_fraction", "root"],
    "model": ["arch", "hidden", "scale", "norm", "norm_groups", "scaler"],
    "clients": ["num_clients", "per_round", "widths", "proportions", "weighting", "label_mask"],
    "method": ["name", "schedule", "lam", "lam_schedule", "lam_end"],
    "train": ["engine", "local_epochs", "batch_size", "lr", "momentum", "weight_decay", "clip_norm", "lr_milestones"],
    "faults": ["dropout", "corrupt", "corrupt_kind", "max_update_norm"],
}
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["1/8", "1/3", "0/0", "fedbrb", "bn", "cnn", "iid"]))
values = st.one_of(scalars, st.lists(scalars, max_size=4))


@st.composite
def config_dicts(draw):
    raw = {}
    for section, keys in SECTIONS.items():
        chosen = draw(st.lists(st.sampled_from(keys + ["bogus"]), max_size=3, unique=True))
        if chosen:
            raw[section] = {k: draw(values) for k in chosen}
    for key in draw(st.lists(st.sampled_from(["seed", "rounds", "name", "unknown_top"]), max_size=2, unique=True)):
        raw[key] = draw(values)
    return raw


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config_dicts())
def test_config_parser_accepts_or_names_the_problem(raw):
    try:
        cfg = config_from_dict(raw)
    except ConfigError as exc:
        msg = str(exc)
        assert msg.startswith("invalid config:")
        fields = {f"{s}.{k}" for s, ks in SECTIONS.items() for k in ks + ["bogus"]} | {"seed", "rounds", "name",
                                                                                       "unknown_top"} | set(SECTIONS)
        assert any(f in msg for f in fields), msg
    else:
        assert isinstance(cfg, ExperimentConfig)
        for x in (cfg.train.lr, cfg.method.lam, cfg.data.dirichlet_alpha):
            assert math.isfinite(x)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_overrides_accept_or_name_the_problem(item):
    try:
        load_config(None, [item])
    except ConfigError as exc:
        assert str(exc)


LAYOUT = ModelLayout((6, 4), (ParamSpec("w1", (6, 3), (0, None)), ParamSpec("w2", (4, 6), (1, 0)),
                              ParamSpec("b2", (4,), (1,))))


@st.composite
def hostile_updates(draw):
    n = draw(st.integers(0, 4))
    out = []
    for i in range(n):
        k0, k1 = draw(st.integers(0, 7)), draw(st.integers(0, 5))
        idx0 = torch.tensor(draw(st.lists(st.integers(-2, 7), min_size=k0, max_size=k0)), dtype=torch.int64)
        idx1 = torch.tensor(draw(st.lists(st.integers(-2, 5), min_size=k1, max_size=k1)), dtype=torch.int64)
        if draw(st.booleans()):
            idx1 = idx1.float()
        shapes = {"w1": (len(idx0), 3), "w2": (len(idx1), len(idx0)), "b2": (len(idx1),)}
        if draw(st.booleans()):
            shapes["w2"] = (draw(st.integers(0, 5)), draw(st.integers(0, 5)))
        params = {k: torch.full(s, draw(st.sampled_from([0.5, math.nan, math.inf, -1e30]))) for k, s in shapes.items()}
        if draw(st.booleans()):
            params.pop(draw(st.sampled_from(sorted(params))))
        weight = draw(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 30)))
        out.append(ClientUpdate(draw(st.integers(0, 3)), weight, (idx0, idx1), params))
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_updates(), st.sampled_from(["overlap", "broadcast"]), st.floats(0, 1))
@example(updates=[ClientUpdate(0, 340282352.0, (torch.tensor([0]), torch.tensor([0])),  # sums overflow float32
                               {"w1": torch.full((1, 3), 0.5), "w2": torch.full((1, 1), 0.5),
                                "b2": torch.tensor([-1e30])})], kind="overlap", lam=0.0)
def test_aggregate_validates_everything_and_never_changes_its_input(updates, kind, lam):
    g = torch.Generator().manual_seed(0)
    params = {s.name: torch.randn(s.shape, generator=g) for s in LAYOUT.params}
    before = {k: v.clone() for k, v in params.items()}
    try:
        res = aggregate(params, LAYOUT, updates, AggregationRule(kind, lam=lam, num_blocks=2))
    except AggregationError as exc:
        assert "client" in str(exc) or "global" in str(exc)
    else:
        for name, t in res.params.items():
            assert torch.isfinite(t).all(), name
        assert set(res.included).isdisjoint(res.excluded)
    assert all(torch.equal(before[k], params[k]) for k in params)
