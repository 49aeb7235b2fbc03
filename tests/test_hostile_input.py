"""Property-based hostile input: whatever arrives, a clear error naming the problem or a valid
result, and no state changed."""

import math
import re
import tomllib
import typing
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from fedbrb_fast.aggregation import AggregationError, AggregationRule, ClientUpdate, aggregate
from fedbrb_fast.config import (
    MODEL_CONFIGS,
    ConfigError,
    ExperimentConfig,
    config_from_dict,
    default_config_text,
    load_config,
)
from fedbrb_fast.models.layout import ModelLayout, ParamSpec

pytestmark = pytest.mark.slow  # several hundred examples per property

SECTIONS = {
    "data": ["dataset", "partition", "dirichlet_alpha", "shards_per_client", "test_fraction", "root"],
    "model": ["arch", "hidden", "scale", "widths", "norm", "norm_groups", "scaler"],
    "clients": ["num_clients", "per_round", "widths", "proportions", "weighting", "label_mask"],
    "method": ["name", "schedule", "lam", "lam_schedule", "lam_end"],
    "train": ["engine", "local_epochs", "batch_size", "lr", "momentum", "weight_decay", "clip_norm", "lr_milestones"],
    "faults": ["dropout", "corrupt", "corrupt_kind", "max_update_norm"],
}
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12),
                    st.sampled_from(["1/8", "1/3", "0/0", "fedbrb", "bn", "cnn", "preresnet18", "iid"]))
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


def section_types(annotation: Any) -> list[type[BaseModel]]:
    """The section classes of a field's type: one, or every member of a union ([model])."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [t for arg in typing.get_args(annotation) for t in section_types(arg)]


def config_fields() -> set[str]:
    """Every settable field: 'rounds', 'train.lr', ... ([model]: the fields of every family)"""
    out = set()
    for name, info in ExperimentConfig.model_fields.items():
        sections = section_types(info.annotation)
        out |= {f"{name}.{field}" for section in sections for field in section.model_fields} if sections else {name}
    return out


CONFIG_FIELDS = config_fields()


def named_problems(msg: str) -> list[list[tuple[str, str]]]:
    """An 'invalid config:' message as its lines, each a list of (field, reason): pydantic gives
    one line per invalid field; the cross-field checks give one line, problems joined by '; '."""
    head, *lines = msg.split("\n  ")
    assert head == "invalid config:" and lines, msg
    out = []
    for line in lines:
        problems = [p.partition(": ") for p in re.split(r"; (?=[a-z_]+\.[a-z_]+: )", line)]
        assert all(sep and reason.strip() for _, sep, reason in problems), line  # 'field: reason' each
        out.append([(field, reason) for field, _, reason in problems])
    return out


def within(field: str, path: str) -> bool:
    """`field` is `path`, lies inside it (clients.widths.0) or holds it."""
    return field == path or field.startswith(path + ".") or path.startswith(field + ".")


def family_fields(raw: dict[str, Any]) -> set[str]:
    """CONFIG_FIELDS as the config's [model] family sees them (all families' where its arch is unknown)."""
    model = raw.get("model")
    arch = str(model.get("arch", "mlp")) if isinstance(model, dict) else None
    family = next((c for c in MODEL_CONFIGS if c.model_fields["arch"].default == arch), None)
    if family is None:
        return CONFIG_FIELDS
    return {f for f in CONFIG_FIELDS if not f.startswith("model.")} | {f"model.{k}" for k in family.model_fields}


def assert_names_the_problems(msg: str, given: set[str], fields: set[str]) -> None:
    """Every problem names a field: one of the `given` key paths (its unknown keys, each reported,
    or its invalid values), or, for a cross-field check (a message of one line), any config field.
    `fields`: the keys this config may set (its model family's)."""
    lines = named_problems(msg)
    for line in lines:
        for field, reason in line:
            if reason == "unknown key":
                assert field in given and field not in fields, (field, msg)
            elif len(lines) > 1 or not any(within(field, p) for p in CONFIG_FIELDS):
                assert any(within(field, p) for p in given) and any(within(field, f) for f in CONFIG_FIELDS), (field,
                                                                                                            msg)
            else:  # a cross-field check names a field, given or not
                assert field in CONFIG_FIELDS, (field, msg)
    unknown = {p for p in given if p not in fields and p.split(".")[0] in SECTIONS.keys() | {"unknown_top"}}
    reported = {field for line in lines for field, reason in line if reason == "unknown key"}
    assert reported == unknown, msg


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config_dicts())
def test_config_parser_accepts_or_names_the_problem(raw):
    given_paths = {f"{name}.{key}" for name, section in raw.items() if isinstance(section, dict) for key in section}
    given_paths |= {name for name, value in raw.items() if not isinstance(value, dict)}
    try:
        cfg = config_from_dict(raw)
    except ConfigError as exc:
        assert_names_the_problems(str(exc), given_paths, family_fields(raw))
    else:
        assert isinstance(cfg, ExperimentConfig)
        assert not any(p not in CONFIG_FIELDS for p in given_paths)  # an unknown key is never accepted
        for x in (cfg.train.lr, cfg.method.lam, cfg.data.dirichlet_alpha):
            assert math.isfinite(x)


DEFAULT = tomllib.loads(default_config_text())
override_keys = st.one_of(st.sampled_from(sorted(CONFIG_FIELDS)),
                          st.sampled_from(["bogus", "train.bogus", "train.lr.x", "rounds.x", "data", "a..b", " "]),
                          st.text(max_size=12))
override_values = st.one_of(st.sampled_from(["0", "-1", "1e9", "nan", "[]", "['1/3']", "true", "{a = 1}", '"x"']),
                            st.text(max_size=12))


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=40), st.builds(lambda k, v: f"{k}={v}", override_keys, override_values)))
def test_overrides_accept_or_name_the_problem(item):
    """An override is applied, or the error names it: bad syntax, a value used as a section, an
    unknown key (exactly), or the invalid field it sets."""
    key, sep, _ = item.partition("=")
    path = key.strip().split(".")
    msg: str | None
    try:
        load_config(None, [item])
    except ConfigError as exc:
        msg = str(exc)
    else:
        msg = None
    if not sep or not all(path):
        assert msg == f"override {item!r}: expected key=value, e.g. train.lr=0.1"
        return
    node = DEFAULT
    for part in path[:-1]:
        node = node.get(part, {})
        if not isinstance(node, dict):
            assert msg == f"override {item!r}: {part!r} is a value, not a section"
            return
    dotted = ".".join(path)
    top = path[0]
    if top not in ExperimentConfig.model_fields:
        assert msg == f"invalid config:\n  {top}: unknown key"
    elif len(path) > 1 and f"{top}.{path[1]}" not in CONFIG_FIELDS and top not in CONFIG_FIELDS:
        assert msg == f"invalid config:\n  {top}.{path[1]}: unknown key"
    elif msg is not None:
        lines = named_problems(msg)
        for line in lines:
            for field, _ in line:  # the override's own field, or a field a cross-field check relates it to
                assert within(field, dotted) or (len(lines) == 1 and field in CONFIG_FIELDS), (field, msg)


LAYOUT = ModelLayout((6, 4), (ParamSpec("w1", (6, 3), (0, None)), ParamSpec("w2", (4, 6), (1, 0)),
                              ParamSpec("b2", (4,), (1,))))


@st.composite
def hostile_updates(draw):
    n = draw(st.integers(0, 4))
    out = []
    for _ in range(n):
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
