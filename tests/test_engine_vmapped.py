"""The batched engine's generic path: a family without a hand-written stacked forward trains through
its functional forward vmapped over the clients, and equals the reference engine per client, after
aggregation and over rounds (float64 at 1e-9, as tests/test_engine_batched.py holds the fast path)."""

from __future__ import annotations

import pytest
import torch
from test_engine_batched import assert_rounds_match, make_data
from tiny_family import TinyNet

from fedbrb_fast.config import config_from_dict
from fedbrb_fast.data import FederatedData
from fedbrb_fast.engines import Simulation, simulation
from fedbrb_fast.models import CNN, MLP, FunctionalView, ModelFamily, ModelLayout, stacked_forward_of


def case(name: str) -> tuple[ModelFamily, FederatedData]:
    if name == "tiny":
        return TinyNet(12, [8, 12], 5), make_data((12,))
    if name == "mlp_bn":
        return FunctionalView(MLP(12, [8, 16], 5, norm="bn", norm_groups=2)), make_data((12,))
    if name == "mlp_gn":
        return FunctionalView(MLP(12, [8, 16], 5, norm="gn", norm_groups=2)), make_data((12,))
    return FunctionalView(CNN(2, [8, 16, 8], 5, norm="bn", norm_groups=2)), make_data((2, 9, 9))


# Seconds each on this machine (vmap's first calls), so test-fast keeps one case.
GENERIC_CASES = [("tiny", "fedbrb"), *(pytest.param(name, method, marks=pytest.mark.slow)
                                      for name in ("tiny", "mlp_bn", "mlp_gn", "cnn_bn")
                                      for method in ("fedbrb", "fd", "fedavg") if (name, method) != ("tiny", "fedbrb"))]


@pytest.mark.parametrize("name,method", GENERIC_CASES)
def test_generic_path_equals_the_reference_per_client_after_aggregation_and_over_rounds(float64, name, method):
    model, data = case(name)
    assert stacked_forward_of(model) is None
    assert_rounds_match(model, data, method, [0.25, 0.5, 0.25, 0.75, 0.25, 0.5, 0.25, 1.0])


@pytest.mark.slow
def test_a_family_with_its_own_tensor_names_runs_end_to_end(tiny_cfg_dict, monkeypatch):
    """The whole simulation (plans, both engines, label masking, aggregation, evaluation) on the
    test-only family, whose tensor names no module knows: the config's MLP section gives the group sizes."""

    def build_tiny(cfg, input_shape, num_classes):
        return TinyNet(int(torch.tensor(input_shape).prod()), cfg.model.hidden_sizes, num_classes)

    monkeypatch.setattr(simulation, "build_model", build_tiny)
    raw = {**tiny_cfg_dict, "rounds": 2, "model": {"arch": "mlp", "hidden": [16, 8]},
           "clients": {**tiny_cfg_dict["clients"], "label_mask": True}}
    runs = {}
    for engine in ("reference", "batched"):
        sim = Simulation(config_from_dict({**raw, "train": {**raw["train"], "engine": engine}}))
        assert isinstance(sim.model, TinyNet) and isinstance(sim.model.layout, ModelLayout)
        runs[engine] = ([sim.run_round() for _ in range(2)], sim.params)
    (ra, pa), (rb, pb) = runs["reference"], runs["batched"]
    assert set(pa) == {"enc.w", "enc.b", "bn.gamma", "bn.beta", "mix.w", "head.w", "head.b"}
    for x, y in zip(ra, rb, strict=True):
        assert x.accuracy == pytest.approx(y.accuracy, abs=0.01)
        assert x.loss == pytest.approx(y.loss, rel=1e-3)
    for k in pa:
        assert torch.allclose(pa[k], pb[k], atol=1e-4, rtol=1e-3), k
