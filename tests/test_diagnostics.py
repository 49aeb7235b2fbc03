"""The global-model diagnostics (experiments/diagnostics.py) against hand-built models whose
answers are known, and their place in a suite summary."""

from __future__ import annotations

import math

import pytest
import torch
from test_experiments import tiny_suite_dict, write_suite

from fedbrb_fast.config import config_from_dict
from fedbrb_fast.engines import build_federated_data
from fedbrb_fast.experiments import load_suite, run_suite
from fedbrb_fast.experiments.diagnostics import (
    DIAGNOSTICS,
    coherence_tensor,
    cross_fitted_temperature,
    diagnose,
    fit_temperature,
    golden_section_minimum,
    tile_coherence,
)
from fedbrb_fast.models import MLP, build_model, initial_params, tile_first_block


def test_golden_section_finds_the_minimum_of_a_unimodal_function():
    assert golden_section_minimum(lambda x: (x - 1.234) ** 2, -7, 7) == pytest.approx(1.234, abs=1e-9)
    assert golden_section_minimum(lambda x: abs(x + 3), -7, 7) == pytest.approx(-3, abs=1e-9)


@pytest.mark.slow  # ~100 loss evaluations per fit: seconds with two torch threads on a busy machine
def test_the_fitted_temperature_undoes_a_known_scaling():
    """Labels drawn from softmax(z): the calibrated temperature of z is about 1, of c*z about c."""
    gen = torch.Generator().manual_seed(0)
    z = 2 * torch.randn(2000, 10, generator=gen)
    y = torch.multinomial(z.softmax(dim=1), 1, generator=gen).squeeze(1)
    base = fit_temperature(z, y)
    assert base == pytest.approx(1.0, abs=0.1)
    for c in (0.25, 8.0):
        assert fit_temperature(c * z, y) == pytest.approx(c * base, rel=2e-3)  # float32 logits: a flat minimum
        assert fit_temperature((c * z).double(), y) == pytest.approx(c * fit_temperature(z.double(), y), rel=1e-6)
    t, loss = cross_fitted_temperature(8 * z, y)
    assert t == pytest.approx(8, rel=0.1)
    assert loss == pytest.approx(float(torch.nn.functional.cross_entropy(z, y)), rel=0.02)


def test_tile_coherence_is_one_for_equal_tiles_and_small_for_independent_ones():
    gen = torch.Generator().manual_seed(1)
    tile = torch.randn(4, 3, generator=gen)
    assert tile_coherence(tile.repeat(8, 8), 8, 8) == pytest.approx(1.0)
    independent = [tile_coherence(torch.randn(32, 24, generator=gen), 8, 8) for _ in range(20)]
    assert sum(independent) / 20 == pytest.approx(1 / 8, rel=0.15)  # 1/sqrt(T) for T = 64 tiles
    opposite = torch.cat([tile, -tile], dim=1)  # two tiles that cancel
    assert tile_coherence(opposite, 1, 2) == pytest.approx(0.0, abs=1e-7)
    assert tile_coherence(torch.zeros(8, 8), 2, 2) == 1.0


@pytest.fixture(scope="module")
def digits():
    cfg = config_from_dict({"data": {"dataset": "digits", "partition": "iid"},
                            "clients": {"num_clients": 8, "per_round": 4}})
    return build_federated_data(cfg)


def ln_config(method="fedbrb", **model):
    return config_from_dict({
        "data": {"dataset": "digits", "partition": "iid"},
        "model": {"arch": "mlp", "hidden": [16, 16], "norm": "gn", "norm_groups": 1, **model},
        "clients": {"num_clients": 8, "per_round": 4, "widths": ["1/4"]}, "method": {"name": method},
        "eval": {"batch_size": 128}})


@pytest.mark.slow
def test_a_tiled_model_computes_its_sub_model_with_logits_k_times_larger(digits):
    """K x K equal tiles, zero biases and LayerNorm (GroupNorm with one group): every hidden layer
    normalizes the K-fold sum away exactly, the classifier sums K equal blocks, so the logits are K
    times the sub-model's (the scaler makes the sub-model's pre-activations the global model's)."""
    cfg = ln_config()
    model = build_model(cfg, digits.input_shape, digits.num_classes)
    params = tile_first_block(initial_params(cfg, model), model.layout, cfg.num_blocks)
    params = {n: torch.zeros_like(t) if n.endswith(".bias") and not n.startswith("norm") else t
              for n, t in params.items()}
    d = diagnose(cfg, params, digits)
    assert set(d) == set(DIAGNOSTICS)
    assert d["logit_scale"] == pytest.approx(cfg.num_blocks, rel=1e-4)
    assert d["tile_coherence"] == pytest.approx(1.0)
    logits = model.forward(params, digits.x_test)
    assert d["submodel_accuracy"] == pytest.approx(float((logits.argmax(1) == digits.y_test).double().mean()))
    assert d["test_loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, digits.y_test)), rel=1e-5)


@pytest.mark.slow
def test_independent_tiles_are_not_coherent_and_the_small_model_has_no_tiles(digits):
    cfg = ln_config()
    model = build_model(cfg, digits.input_shape, digits.num_classes)
    d = diagnose(cfg, initial_params(cfg, model), digits)
    coherence, accuracy = d["tile_coherence"], d["submodel_accuracy"]
    assert coherence is not None and accuracy is not None and d["logit_scale"] is not None
    assert coherence < 0.5 and 0 <= accuracy <= 1
    small = ln_config("fedavg_small")
    d = diagnose(small, initial_params(small, build_model(small, digits.input_shape, digits.num_classes)), digits)
    assert (d["logit_scale"], d["submodel_accuracy"], d["tile_coherence"]) == (None, None, None)
    temperature = d["temperature"]
    assert temperature is not None and math.isfinite(temperature) and temperature > 0


def test_the_coherence_tensor_is_the_weight_between_groups_zero_and_one():
    assert coherence_tensor(MLP(64, [16, 16], 10).layout) == "hidden1.weight"
    assert coherence_tensor(MLP(64, [16], 10).layout) is None


@pytest.mark.slow
def test_a_suite_that_diagnoses_records_every_arms_diagnostics(tmp_path):
    raw = tiny_suite_dict()
    raw.update(diagnose=True, seeds=[0], methods=["fedbrb", "fedavg_small", "fedavg"],
               variants=[{"name": "tiled", "set": ["method.name=fedbrb", "method.init='tiled'"]}],
               roles={"tiled_init": "tiled"})
    summary = run_suite(load_suite(write_suite(tmp_path, raw)), tmp_path / "runs", command="test", show_progress=False)
    for sc in summary["scenarios"]:
        for arm, result in sc["results"].items():
            d = result["diagnostics"]
            assert set(d) == set(DIAGNOSTICS) and d["temperature"]["n"] == 1
            assert (d["tile_coherence"]["mean"] is None) == (arm == "fedavg_small")
            assert result["final_loss"]["mean"] == pytest.approx(d["test_loss"]["mean"], rel=1e-4)
        assert sc["results"]["tiled"]["diagnostics"]["tile_coherence"]["mean"] > 0.99
    fedavg_mix = summary["scenarios"][1]["results"]["fedavg"]  # shared with w4: read from w4's folder
    assert fedavg_mix["shared_from"] == ["w4"]
    assert fedavg_mix["diagnostics"] == summary["scenarios"][0]["results"]["fedavg"]["diagnostics"]
    raw.pop("diagnose")
    plain = run_suite(load_suite(write_suite(tmp_path, {**raw, "name": "plain"})), tmp_path / "runs",
                      command="test", show_progress=False)
    assert all("diagnostics" not in r for sc in plain["scenarios"] for r in sc["results"].values())
