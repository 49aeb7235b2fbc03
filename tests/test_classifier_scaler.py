"""`model.classifier_scaler` (docs/algorithm.md#classifier-scaler): while a client trains, the MLP's
classifier input is divided by the width ratio too, so a sub-model's logits have the scale of a
global model made of K equal blocks of it; off by default."""

from __future__ import annotations

import pytest
import torch
from test_engine_batched import assert_rounds_match, make_data

from fedbrb_fast.config import ConfigError, ExperimentConfig, MLPConfig, config_from_dict, config_to_toml
from fedbrb_fast.models import MLP, build_model, extract, tile_first_block
from fedbrb_fast.models.family import relu_chain_of
from fedbrb_fast.plans import fedbrb_indices


def test_scales_the_classifier_input_only_in_training():
    model = MLP(4, [3], 2, norm="none", scaler=False, classifier_scaler=True)
    p = {"hidden0.weight": torch.eye(3, 4), "hidden0.bias": torch.zeros(3),
         "out.weight": torch.ones(2, 3), "out.bias": torch.ones(2)}
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert torch.allclose(model.forward(p, x, beta=0.25, train=True), torch.full((1, 2), 25.0))  # 4 * 6 + 1
    assert torch.allclose(model.forward(p, x, beta=0.25, train=False), torch.full((1, 2), 7.0))
    off = MLP(4, [3], 2, norm="none", scaler=False)
    assert torch.allclose(off.forward(p, x, beta=0.25, train=True), torch.full((1, 2), 7.0))


def _mlp(cfg: ExperimentConfig) -> MLP:
    model = build_model(cfg, (8,), 3)
    assert isinstance(model, MLP) and isinstance(cfg.model, MLPConfig)
    return model


def test_default_is_off_unwritten_and_the_config_carries_it():
    default = config_from_dict({})
    assert isinstance(default.model, MLPConfig) and not default.model.classifier_scaler
    assert not _mlp(default).classifier_scaler
    assert "classifier_scaler" not in config_to_toml(default)  # earlier runs' configs still match
    assert _mlp(config_from_dict({"model": {"arch": "mlp", "classifier_scaler": True}})).classifier_scaler is True
    with pytest.raises(ConfigError, match="classifier_scaler"):  # an MLP option only
        config_from_dict({"model": {"arch": "cnn", "classifier_scaler": True}})


def test_turns_the_client_major_relu_chain_kernel_off():
    assert relu_chain_of(MLP(4, [8], 2, norm="none")) is not None
    assert relu_chain_of(MLP(4, [8], 2, norm="none", classifier_scaler=True)) is None


@pytest.mark.parametrize("classifier_scaler", [True, False])
def test_a_global_model_of_equal_blocks_scores_its_sub_model_logits(classifier_scaler):
    """With one-group GroupNorm (scale-invariant) and zero hidden biases, the global model of K x K
    equal tiles computes K x its sub-model's classifier input; the option puts that factor into the
    sub-model's training forward, so its logits equal the global model's, and without it they do not."""
    k = 8
    model = MLP(6, [32, 16], 5, norm="gn", norm_groups=1, scaler=True, classifier_scaler=classifier_scaler)
    params = tile_first_block(model.init(torch.Generator().manual_seed(0)), model.layout, k)
    params = {n: torch.zeros_like(t) if n.startswith("hidden") and n.endswith(".bias") else t
              for n, t in params.items()}
    small = MLP(6, [32 // k, 16 // k], 5, norm="gn", norm_groups=1, scaler=True, classifier_scaler=classifier_scaler)
    idx = fedbrb_indices(0, 1 / k, model.layout.group_sizes, k, "diagonal", group_segments=model.layout.group_segments)
    x = torch.randn(7, 6, generator=torch.Generator().manual_seed(1))
    whole = model.forward(params, x)
    sub = small.forward(extract(params, model.layout, idx), x, beta=1 / k, train=True)
    bias = params["out.bias"]
    if classifier_scaler:
        torch.testing.assert_close(sub, whole, rtol=1e-4, atol=1e-4)
    else:
        torch.testing.assert_close(k * (sub - bias), whole - bias, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(sub, whole, rtol=1e-2, atol=1e-2)


# Seconds each here, so test-fast keeps one case.
ENGINE_CASES = [("fedbrb", "gn"), *(pytest.param(method, norm, marks=pytest.mark.slow)
                                    for method, norm in (("fedbrb", "none"), ("heterofl", "gn"), ("heterofl", "none")))]


@pytest.mark.parametrize("method,norm", ENGINE_CASES)
def test_batched_engine_equals_the_reference_with_it_on(float64, method, norm):
    model = MLP(12, [8, 16], 5, norm=norm, norm_groups=2, classifier_scaler=True)
    assert_rounds_match(model, make_data((12,)), method, [0.25, 0.5, 0.25, 0.75, 0.25, 0.5, 0.25, 1.0])
