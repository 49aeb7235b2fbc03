"""Client-major training of ReLU chains (training/client_major.py, the numba kernel) against the
reference engine and the step-major path, and when the batched engine takes it."""

import pytest
import torch
from test_engine_batched import assert_same_clients, make_data, model_and_data, per_client, run_both

import fedbrb_fast.training.batched as batched_training
from fedbrb_fast.config import ConfigError, config_from_dict
from fedbrb_fast.engines import BatchedEngine, ReferenceEngine, RoundContext
from fedbrb_fast.models import CNN, MLP
from fedbrb_fast.plans import make_round_plans
from fedbrb_fast.profiling import PhaseTimer
from fedbrb_fast.training import LocalTraining

pytest.importorskip("numba")


@pytest.fixture
def kernel_calls(monkeypatch):
    calls = []
    original = batched_training.train_client_major

    def spy(*args, **kwargs):
        calls.append(kwargs["span"] is not None)
        return original(*args, **kwargs)

    monkeypatch.setattr(batched_training, "train_client_major", spy)
    return calls


@pytest.mark.parametrize("arch,norm,trainer,expected", [
    ("mlp", "none", "auto", [False]), ("mlp_wide", "none", "auto", [True]), ("mlp", "none", "stacked", []),
    ("mlp", "bn", "auto", []), ("mlp", "gn", "auto", []), ("cnn", "none", "auto", [])])
def test_auto_takes_the_kernel_for_relu_chains_only(kernel_calls, arch, norm, trainer, expected):
    model, data = model_and_data(arch, norm)
    run_both(model, data, "fedrolex", widths=[0.5] * 8, cpu_trainer=trainer)
    assert kernel_calls == expected  # one chunk; the data-span input layer where the inputs are wide


@pytest.mark.parametrize("arch", ["mlp", "mlp_wide"])
@pytest.mark.parametrize("method", ["fedbrb", pytest.param("fedrolex", marks=pytest.mark.slow)])
@pytest.mark.parametrize("label_mask,clip,momentum", [(True, 0.05, 0.9), (False, 0.5, 0.0),
                                                      pytest.param(True, None, 0.0, marks=pytest.mark.slow)])
def test_label_masking_clipping_and_plain_sgd_match_reference(float64, kernel_calls, arch, method, label_mask, clip,
                                                              momentum):
    model, data = model_and_data(arch, "none")
    _, ref, bat = run_both(model, data, method, label_mask=label_mask, clip=clip, momentum=momentum)
    assert kernel_calls
    assert_same_clients(ref, bat, atol=1e-9, rtol=1e-9)


def test_without_the_scaler_and_one_hidden_layer(float64, kernel_calls):
    for model in (MLP(72, [16], 5, norm="none", scaler=False), MLP(12, [8, 16, 8], 5, norm="none", scaler=True)):
        data = make_data((model.in_features,))
        _, ref, bat = run_both(model, data, "heterofl")
        assert_same_clients(ref, bat, atol=1e-9, rtol=1e-9)
    assert set(kernel_calls) == {True, False}  # a chunk per width; the data-span input layer for 72 inputs


def test_float32_equals_the_step_major_path_over_chunks():
    model, data = model_and_data("mlp_wide", "none")
    _, _, kernel = run_both(model, data, "fedbrb", max_clients=3)
    _, _, stacked = run_both(model, data, "fedbrb", max_clients=3, cpu_trainer="stacked")
    a, b = per_client(kernel), per_client(stacked)
    for c in a:
        for name, t in a[c].params.items():
            assert torch.allclose(t, b[c].params[name], atol=5e-5, rtol=1e-4), (c, name)
        assert kernel.train_losses[c] == pytest.approx(stacked.train_losses[c], rel=1e-4)


def test_diverging_clients_give_the_reference_non_finite_updates():
    """A learning rate that blows up: the kernel neither fails nor hides it; the same clients end
    non-finite as in the reference engine (aggregation screens them out)."""
    model = MLP(12, [8, 16], 5, norm="none")
    data = make_data((12,))
    params = model.init(torch.Generator().manual_seed(0))
    plans = make_round_plans("fedrolex", 1, list(range(8)), [0.5] * 8, group_sizes=model.layout.group_sizes,
                             num_blocks=4, seed=0)
    ctx = RoundContext(round_idx=1, seed=0, model=model, data=data, local=LocalTraining(3, 8, 1e30, 0.9, 0.0, None),
                       weighting="samples", label_masking=False)
    ref = per_client(ReferenceEngine().train_round(ctx, plans, params, PhaseTimer()))
    bat = per_client(BatchedEngine().train_round(ctx, plans, params, PhaseTimer()))

    def finite(updates):
        return {c: all(bool(torch.isfinite(t).all()) for t in u.params.values()) for c, u in updates.items()}

    assert finite(ref) == finite(bat)
    assert not all(finite(bat).values())


def test_unknown_cpu_trainer_is_refused(tiny_cfg_dict):
    with pytest.raises(ValueError, match="cpu_trainer"):
        BatchedEngine(cpu_trainer="fast")
    tiny_cfg_dict["train"]["cpu_trainer"] = "fast"
    with pytest.raises(ConfigError, match="train.cpu_trainer"):
        config_from_dict(tiny_cfg_dict)


def test_cnn_is_not_a_relu_chain():
    from fedbrb_fast.models.family import relu_chain_of

    assert relu_chain_of(CNN(2, [8, 16, 8], 5, norm="none")) is None
    assert relu_chain_of(MLP(12, [8], 5, norm="bn")) is None
    chain = relu_chain_of(MLP(12, [8, 16], 5, norm="none", scaler=False))
    assert chain is not None and [layer.weight for layer in chain.layers] == ["hidden0.weight", "hidden1.weight",
                                                                              "out.weight"]
    assert not chain.scaler
