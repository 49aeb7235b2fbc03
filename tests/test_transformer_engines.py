"""The Transformer on every engine: the batched engine (its hand-written stacked forward, and the
vmapped functional forward) against the reference engine per client, after aggregation and over
rounds, every method with FedBRB rolling the layout's shear and every head sliced inside; whole
runs on Shakespeare through the config on the reference, batched and distributed engines;
checkpoint resume; the plain per-client loop of the engine benchmark computes the same model."""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
import torch
from test_engine_batched import SIZES, assert_rounds_match

from fedbrb_fast.aggregation import aggregate, rule_for_method
from fedbrb_fast.config import config_from_dict
from fedbrb_fast.data import FederatedData
from fedbrb_fast.engines import ReferenceEngine, RoundContext, Simulation
from fedbrb_fast.models import FunctionalView, Transformer
from fedbrb_fast.plans import make_round_plans, shear_coefficients
from fedbrb_fast.profiling import PhaseTimer
from fedbrb_fast.runner import resume_experiment, run_experiment
from fedbrb_fast.training import LocalTraining

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from plain_loop import plain_round  # noqa: E402

VOCAB, LENGTH = 7, 6
WIDTHS = [0.25, 0.5, 0.25, 0.75, 0.25, 0.5, 0.25, 1.0]


def token_data(sizes=SIZES, seed=0) -> FederatedData:
    """Random character sequences: inputs and their next-token targets [n, LENGTH]."""
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    seq = torch.randint(0, VOCAB, (n, LENGTH + 1), generator=g)
    x, y = seq[:, :-1].contiguous(), seq[:, 1:].contiguous()
    bounds = torch.tensor([0, *sizes]).cumsum(0)
    perm = torch.randperm(n, generator=g)
    idx = tuple(perm[bounds[i]:bounds[i + 1]].sort().values for i in range(len(sizes)))
    return FederatedData(x, y, x[:20], y[:20], VOCAB, (LENGTH,), idx, vocabulary="abcdefg")


def tiny(scaler: bool = True) -> Transformer:
    # K = 4: the head dimension 4 leaves one channel per head to the narrowest clients
    return Transformer(VOCAB, context=8, dim=16, heads=4, mlp=8, layers=2, scaler=scaler)


@pytest.mark.slow  # a few seconds each
@pytest.mark.parametrize("path", ["stacked", "functional"])
@pytest.mark.parametrize("method", ["fedbrb", "fedrolex", "heterofl", "fd", "fedavg"])
def test_batched_equals_the_reference_per_client_after_aggregation_and_over_rounds(float64, path, method):
    model = tiny()
    on_path = FunctionalView(model) if path == "functional" else model
    assert_rounds_match(on_path, token_data(), method, WIDTHS, shear=shear_coefficients(model.layout))


def test_every_head_keeps_the_same_channels():
    model = tiny()
    plans = make_round_plans("fedrolex", 3, [0, 1], [0.25, 0.5], group_sizes=model.layout.group_sizes,
                             num_blocks=4, seed=0, group_segments=model.layout.group_segments)
    for plan in plans:
        att = plan.indices[1].view(4, -1)  # [heads, channels kept per head]
        assert torch.equal(att - att[:, :1], (att - att[:, :1])[:1].expand_as(att))
        assert torch.equal(att[:, 0] // 4, torch.arange(4))  # every head, each in its own segment


def tiny_cfg(method: str, engine: str, tmp_path: Path, **sections) -> dict:
    raw: dict[str, Any] = {"rounds": 2, "seed": 0, "output_dir": str(tmp_path / engine),
           "data": {"dataset": "shakespeare", "partition": "natural", "seq_len": 12, "max_test_sequences": 30},
           "model": {"arch": "transformer", "layers": 1, "dim": 16, "heads": 2, "mlp": 16, "context": 12},
           "clients": {"num_clients": 6, "per_round": 4, "widths": ["1/4", "1/2"], "proportions": [1, 1]},
           "method": {"name": method, "lam": 0.5}, "train": {"engine": engine, "local_epochs": 1, "batch_size": 4,
                                                              "lr": 0.05, "max_clients_per_step": 3},
           "eval": {"every": 1}}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return raw


def comparable(rows):
    return [{k: v for k, v in r.items() if not k.startswith("sec_")} for r in rows]


@pytest.mark.slow  # two engines x two rounds on the real plays
@pytest.mark.parametrize("method", ["fedbrb", "fedrolex", "heterofl", "fd", "fedavg", "fedavg_small"])
def test_every_method_runs_alike_on_the_reference_and_batched_engines(float64, tmp_path, method):
    runs = {}
    for engine in ("reference", "batched"):
        cfg = config_from_dict(tiny_cfg(method, engine, tmp_path, clients={"label_mask": True}))
        sim = Simulation(cfg)
        assert isinstance(sim.model, Transformer)
        if method == "fedavg_small":  # the global model has width 1/4: every head a quarter as wide
            assert sim.model.layout.group_sizes == (4, 4, 4) and sim.model.heads == 2
        runs[engine] = ([sim.run_round() for _ in range(cfg.rounds)], sim.params)
    (ref_rows, ref_params), (bat_rows, bat_params) = runs["reference"], runs["batched"]
    for a, b in zip(ref_rows, bat_rows, strict=True):
        assert a.accuracy == b.accuracy and a.loss == pytest.approx(b.loss, rel=1e-9)
        assert a.perplexity == pytest.approx(torch.tensor(a.loss).exp().item(), rel=1e-12)
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-6) and (a.clients, a.excluded) == (b.clients, 0)
    for k in ref_params:
        assert torch.allclose(ref_params[k], bat_params[k], atol=1e-9, rtol=1e-9), k


@pytest.mark.slow  # two runs and a resume
def test_distributed_engine_and_resume_give_the_batched_run(tmp_path, crash_in_round):
    runs = {}
    for engine in ("batched", "distributed"):
        with pytest.warns(RuntimeWarning, match="single process") if engine == "distributed" else nullcontext():
            runs[engine] = run_experiment(config_from_dict(tiny_cfg("fedbrb", engine, tmp_path)))
    assert comparable(runs["distributed"].rows) == comparable(runs["batched"].rows)
    assert (tmp_path / "batched" / "vocabulary.json").is_file()
    # a crash in round 2 after a checkpoint, then --resume: the same rows and model
    raw = {**tiny_cfg("fedbrb", "batched", tmp_path, checkpoint={"every": 1}), "output_dir": str(tmp_path / "crash")}
    disarm = crash_in_round(2)
    with pytest.raises(SystemExit):
        run_experiment(config_from_dict(raw))
    disarm()
    resumed = resume_experiment(tmp_path / "crash")
    assert comparable(resumed.rows) == comparable(runs["batched"].rows)


@pytest.mark.parametrize("method", ["fedbrb", "heterofl"])
def test_the_benchmark_plain_loop_aggregates_the_reference_engines_model(method):
    model, data = tiny(), token_data()
    params = model.init(torch.Generator().manual_seed(0))
    hp = LocalTraining(1, 4, 0.05, 0.9, 5e-4)
    plans = make_round_plans(method, 1, list(range(len(SIZES))), [0.5] * len(SIZES),
                             group_sizes=model.layout.group_sizes, num_blocks=2, seed=0,
                             shear=shear_coefficients(model.layout), group_segments=model.layout.group_segments)
    rule = rule_for_method(method, 0.5, 2)
    plain = plain_round(model, params, data, plans, hp, rule, seed=0, round_idx=1)
    ctx = RoundContext(1, 0, model, data, hp, "samples", False)
    trained = ReferenceEngine().train_round(ctx, plans, params, PhaseTimer())
    ref = aggregate(params, model.layout, trained.updates, rule).params
    for name, p in ref.items():
        assert not torch.equal(p, params[name]), name  # the round trained
        assert torch.allclose(plain[name], p, atol=1e-5, rtol=1e-4), name
