import pytest
from pydantic import ValidationError

from fedbrb_fast.config import (
    ConfigError,
    ExperimentConfig,
    PreResNetConfig,
    apply_overrides,
    config_from_dict,
    config_to_toml,
    load_config,
    parse_override,
)


def test_embedded_default_is_valid_and_small_to_large():
    cfg = load_config()
    assert cfg.data.dataset == "mnist1d"  # generated from templates in a package: nothing to download
    assert cfg.train.lr_schedule == "multistep" and max(cfg.train.lr_milestones) < cfg.rounds
    assert max(cfg.clients.widths) < 1 and cfg.num_blocks == round(1 / min(cfg.clients.widths))


def test_widths_accept_fractions():
    cfg = config_from_dict({"clients": {"widths": ["1/4", 0.125, "1/16"]}, "model": {"hidden": [64, 64]}})
    assert cfg.clients.widths == [0.25, 0.125, 0.0625] and cfg.num_blocks == 16


@pytest.mark.parametrize("override,value", [
    ("train.lr=0.2", 0.2), ("rounds=7", 7), ("clients.widths=[0.5, 0.25]", [0.5, 0.25]),
    ("method.name=heterofl", "heterofl"), ("model.scaler=false", False), ('name="a b"', "a b"),
])
def test_override_values_are_typed(override, value):
    path, parsed = parse_override(override)
    assert parsed == value and path == override.split("=")[0].split(".")


def test_overrides_apply_and_validate(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('rounds = 3\n[train]\nlr = 0.1\n')
    cfg = load_config(f, ["train.lr=0.3", "method.lam=0.25"])
    assert cfg.rounds == 3 and cfg.train.lr == 0.3 and cfg.method.lam == 0.25


def test_resolved_toml_round_trips(tmp_path):
    cfg = load_config(None, ["train.clip_norm=5.0", "clients.proportions=[1, 2]", "clients.widths=['1/4', '1/8']"])
    f = tmp_path / "resolved.toml"
    f.write_text(config_to_toml(cfg))
    assert load_config(f) == cfg


def error_of(raw=None, overrides=()):
    with pytest.raises(ConfigError) as info:
        config_from_dict(apply_overrides(raw or {}, list(overrides)))
    return str(info.value)


@pytest.mark.parametrize("overrides,field,reason", [
    (["bogus=1"], "bogus", "unknown key"),
    (["train.bogus=1"], "train.bogus", "unknown key"),
    (["train.lr=fast"], "train.lr", "number"),
    (["train.lr=-1"], "train.lr", "greater than 0"),
    (["rounds=0"], "rounds", "greater than or equal to 1"),
    (["method.name=fedprox"], "method.name", "fedbrb"),
    (["method.lam=1.5"], "method.lam", "less than or equal to 1"),
    (["clients.per_round=200"], "clients.per_round", "only 100 clients"),
    (["clients.widths=[0.3]"], "clients.widths", "not an integer"),
    (["clients.widths=['3/8', '1/4']", "model.hidden=[64]"], "clients.widths", "whole number of blocks"),
    (["clients.widths=[1.5]"], "clients.widths.0", "less than or equal to 1"),
    (["clients.widths=['x/y']"], "clients.widths.0", "fraction"),
    (["clients.widths=[]"], "clients.widths", "at least 1"),
    (["clients.widths=['1/16']", "model.hidden=[100, 64]"], "model.hidden", "100 (group 0) is not divisible by K = 16"),
    (["clients.proportions=[1, 2]"], "clients.proportions", "2 proportions for 1 widths"),
    (["model.scale=0.3"], "model.scale", "not a positive integer"),
    (["model.norm=gn", "model.norm_groups=3"], "model.norm_groups", "do not divide"),
    (["model.arch=cnn", "data.dataset=mnist1d"], "model.arch", "image data"),
    (["model.arch=resnet"], "model.arch",
     "unknown model family 'resnet' (one of 'mlp', 'cnn', 'preresnet18', 'transformer')"),
    (["model.arch=preresnet18", "data.dataset=mnist1d"], "model.arch", "'preresnet18' needs image data"),
    (["model.arch=preresnet18", "model.widths=[64, 128, 256, 500]", "clients.widths=['1/8']"], "model.widths",
     "stage 3 width 500 is not divisible by K = 8"),
    (["model.arch=preresnet18", "model.widths=[64, 128]"], "model.widths", "at least 4"),
    (["model.arch=preresnet18", "model.widths=[64, 128, 0, 512]"], "model.widths.2", "greater than or equal to 1"),
    (["model.arch=preresnet18", "model.hidden=[64]"], "model.hidden", "unknown key"),
    (["model.arch=preresnet18", "model.norm=gn", "model.norm_groups=3"], "model.norm_groups", "do not divide"),
    (["model.arch=cnn", "model.bogus=1"], "model.bogus", "unknown key"),
    (["model.arch=resnet", "model.bogus=1"], "model.bogus", "unknown key"),
    (["model=3"], "model", "model family's fields"),
    (["model.arch=cnn", "model.hidden=[32, 20]", "clients.widths=['1/8']"], "model.hidden",
     "20 (group 1) is not divisible by K = 8"),
    (["data.dataset=cifar10"], "data.root", "nothing is downloaded"),
    (["data.partition=natural"], "data.partition", "natural"),
    (["train.lr_milestones=[10, 5]"], "train.lr_milestones", "strictly increasing"),
    (["train.engine=fast"], "train.engine", "reference"),
    (["aggregation.backend=gpu"], "aggregation.backend", "numba"),
    (["train.max_clients_per_step=0"], "train.max_clients_per_step", "greater than or equal to 1"),
    (["clients.per_round=2.5"], "clients.per_round", "integer"),
])
def test_invalid_values_name_field_and_reason(overrides, field, reason):
    msg = error_of({}, overrides)
    assert field in msg and reason in msg, msg


def test_bad_override_syntax_and_sections():
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("train.lr")
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"rounds": 3}, ["rounds.x=1"])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("rounds = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_all_problems_reported_together():
    msg = error_of({}, ["train.lr=-1", "rounds=0"])
    assert "train.lr" in msg and "rounds" in msg


def test_config_is_frozen():
    cfg = ExperimentConfig()
    rounds, lr = cfg.rounds, cfg.train.lr
    for section, field in ((cfg, "rounds"), (cfg.train, "lr")):  # the top level and every section
        with pytest.raises(ValidationError) as info:
            setattr(section, field, 5)
        assert [(e["type"], e["loc"]) for e in info.value.errors()] == [("frozen_instance", (field,))]
    assert (cfg.rounds, cfg.train.lr) == (rounds, lr)


def test_preresnet18_defaults_and_group_sizes():
    cfg = config_from_dict({"model": {"arch": "preresnet18"}, "clients": {"widths": ["1/16"]}})
    m = cfg.model
    assert isinstance(m, PreResNetConfig)
    assert m.widths == [64, 128, 256, 512] and m.norm == "bn" and m.scaler
    assert cfg.data.dataset == "mnist5k"
    # Each stage's stream and its two blocks' inner groups, stage by stage.
    assert m.group_sizes == [64] * 3 + [128] * 3 + [256] * 3 + [512] * 3
    assert m.narrowed(16).widths == [4, 8, 16, 32]
