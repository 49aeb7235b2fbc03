"""PreResNet-18 on every engine: the batched engine (the path the family takes, and the vmapped
functional forward where it has a hand-written one) against the reference engine per client, after
aggregation and over rounds, for every method with FedBRB rolling the layout's shear; whole runs of
every method on the reference, batched and distributed engines. Tiny widths and 8x8 images keep it fast."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pytest
import torch
from test_data_files import make_cifar10, make_cifar100
from test_engine_batched import SIZES, assert_rounds_match, make_data

from fedbrb_fast.config import config_from_dict
from fedbrb_fast.engines import Simulation
from fedbrb_fast.models import FunctionalView, ModelFamily, PreResNet, stacked_forward_of
from fedbrb_fast.plans import shear_coefficients
from fedbrb_fast.runner import run_experiment

ENGINE_METHODS = ["fedbrb", "fedrolex", "heterofl", "fd", "fedavg"]  # fedavg_small: a narrower fedavg (below)
WIDTHS = [0.25, 0.5, 0.25, 0.75, 0.25, 0.5, 0.25, 1.0]
TINY = [8, 8, 8, 8]  # stage widths: K = 4 leaves two channels per group to the narrowest clients


def tiny_preresnet(norm: str) -> PreResNet:
    return PreResNet(2, TINY, 5, norm=norm, norm_groups=2)


# The batched engine's paths: the family as registered, and its functional forward alone where the
# family also has a hand-written stacked forward (otherwise that is the path it already takes).
PATHS = ["family", *(["functional"] if stacked_forward_of(tiny_preresnet("bn")) is not None else [])]


def on_path(model: PreResNet, path: str) -> ModelFamily:
    return FunctionalView(model) if path == "functional" else model


@pytest.mark.slow  # about a second each
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("method", ENGINE_METHODS)
@pytest.mark.parametrize("norm", ["bn", "gn", "none"])
def test_batched_equals_the_reference_per_client_after_aggregation_and_over_rounds(float64, path, method, norm):
    model = on_path(tiny_preresnet(norm), path)
    data = make_data((2, 8, 8))
    assert_rounds_match(model, data, method, WIDTHS, shear=shear_coefficients(model.layout))


def preresnet_cfg(tiny_cfg_dict, method: str, engine: str, **sections) -> dict:
    """The tiny config (scikit-learn digits, 8x8x1; widths 1/4 and 1/2) on a tiny PreResNet-18."""
    raw = {**tiny_cfg_dict, "model": {"arch": "preresnet18", "widths": TINY, "norm": "bn"},
           "method": {"name": method, "lam": 0.5}, "train": {**tiny_cfg_dict["train"], "engine": engine}}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return raw


def comparable(rows):
    return [{k: v for k, v in r.items() if not k.startswith("sec_")} for r in rows]


CLIENT_SIZES = [*SIZES, 11, 5, 8, 3]  # the tiny config's 12 clients


@pytest.mark.slow  # two engines x two rounds
@pytest.mark.parametrize("method", [*ENGINE_METHODS, "fedavg_small"])
def test_every_method_runs_alike_on_the_reference_and_batched_engines(float64, tiny_cfg_dict, method):
    """Whole simulations (sampling, the layout's shear, label masking, aggregation, evaluation) in
    float64 on random 8x8 images: float32 rounding grows chaotically through PreResNet's 17 static
    BatchNorms on batches of a few samples, float64 shows the arithmetic is the same."""
    data = make_data((1, 8, 8), sizes=CLIENT_SIZES)
    runs = {}
    for engine in ("reference", "batched"):
        cfg = config_from_dict(preresnet_cfg(tiny_cfg_dict, method, engine, clients={"label_mask": True}))
        sim = Simulation(cfg, data)
        assert isinstance(sim.model, PreResNet)
        if method == "fedavg_small":  # the global model itself has width beta_min = 1/4
            assert sim.model.layout.group_sizes == (2,) * 12
        runs[engine] = ([sim.run_round() for _ in range(cfg.rounds)], sim.params)
    (ref_rows, ref_params), (bat_rows, bat_params) = runs["reference"], runs["batched"]
    for a, b in zip(ref_rows, bat_rows, strict=True):
        assert a.accuracy == b.accuracy and a.loss == pytest.approx(b.loss, rel=1e-9)
        # the batched engine sums train losses in float32
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-6) and (a.clients, a.excluded) == (b.clients, 0)
    for k in ref_params:
        assert ref_params[k].dtype == torch.float64
        assert torch.allclose(ref_params[k], bat_params[k], atol=1e-9, rtol=1e-9), k


@pytest.mark.slow  # two runs
def test_the_distributed_engine_on_one_process_equals_the_batched_engine(tiny_cfg_dict, tmp_path):
    runs = {}
    for engine in ("batched", "distributed"):
        raw = preresnet_cfg(tiny_cfg_dict, "fedbrb", engine, clients={"label_mask": True})
        with pytest.warns(RuntimeWarning, match="single process") if engine == "distributed" else nullcontext():
            runs[engine] = run_experiment(config_from_dict({**raw, "output_dir": str(tmp_path / engine)}))
    assert comparable(runs["distributed"].rows) == comparable(runs["batched"].rows)



@pytest.mark.slow  # a second each
@pytest.mark.parametrize("dataset,make_files,folder,classes", [
    ("cifar10", make_cifar10, "cifar-10-batches-bin", 10),
    ("cifar100", make_cifar100, "cifar-100-binary", 100),
], ids=["cifar10", "cifar100"])
def test_preresnet18_trains_on_cifar_from_local_files(tiny_cfg_dict, tmp_path, dataset, make_files, folder, classes):
    """CIFAR from binary files the test writes (32x32x3: 32 -> 16 -> 8 -> 4 over the stages)."""
    make_files(tmp_path / folder, np.random.default_rng(0))
    raw = preresnet_cfg(tiny_cfg_dict, "fedbrb", "batched", data={"dataset": dataset, "root": str(tmp_path),
                                                                  "partition": "iid"},
                        clients={"num_clients": 4, "per_round": 2, "widths": ["1/2"], "proportions": None})
    sim = Simulation(config_from_dict({**raw, "rounds": 1}))
    assert isinstance(sim.model, PreResNet) and sim.model.in_channels == 3 and sim.model.layout.num_classes == classes
    record = sim.run_round()
    assert record.accuracy is not None and record.excluded == 0
    assert all(torch.isfinite(t).all() for t in sim.params.values())
