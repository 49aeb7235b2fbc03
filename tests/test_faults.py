"""Client dropout and corrupted updates: the round goes on, nothing non-finite reaches the model."""

import pytest
import torch

from fedbrb_fast.aggregation import ClientBatch, ClientUpdate, as_dense
from fedbrb_fast.config import config_from_dict
from fedbrb_fast.engines import Simulation, simulation
from fedbrb_fast.faults import corrupt, pick_clients, without_clients


def sim_for(tiny_cfg_dict, engine, **faults):
    raw = {**tiny_cfg_dict, "rounds": 3, "faults": faults,
           "train": {**tiny_cfg_dict["train"], "engine": engine}}
    return Simulation(config_from_dict(raw))


def run(sim):
    return [sim.run_round() for _ in range(sim.cfg.rounds)]


@pytest.mark.parametrize("engine", ["reference", "batched"])
def test_dropout_is_logged_and_the_round_goes_on(tiny_cfg_dict, engine):
    sim = sim_for(tiny_cfg_dict, engine, dropout=0.5)
    records = run(sim)
    assert sum(r.dropped for r in records) > 0
    for r in records:
        drops = [e for e in r.events if e.kind == "dropout"]
        assert len(drops) == r.dropped and all(e.round == r.round for e in drops)
    assert all(torch.isfinite(t).all() for t in sim.params.values())
    again = run(sim_for(tiny_cfg_dict, engine, dropout=0.5))
    assert [r.dropped for r in again] == [r.dropped for r in records]  # seeded


@pytest.mark.parametrize("engine", ["reference", "batched"])
@pytest.mark.parametrize("kind", ["nan", "inf"])
def test_non_finite_updates_never_reach_the_model(tiny_cfg_dict, engine, kind):
    sim = sim_for(tiny_cfg_dict, engine, corrupt=0.4, corrupt_kind=kind)
    records = run(sim)
    corrupted = [e.client for r in records for e in r.events if e.kind == "corrupted"]
    excluded = [e for r in records for e in r.events if e.kind == "excluded"]
    assert corrupted and sorted(corrupted) == sorted(e.client for e in excluded)
    assert all("non-finite" in e.detail for e in excluded)
    assert sum(r.excluded for r in records) == len(corrupted)
    assert all(torch.isfinite(t).all() for t in sim.params.values())


@pytest.mark.parametrize("engine", ["reference", "batched"])
def test_norm_bound_excludes_absurd_updates(tiny_cfg_dict, engine):
    unbounded = sim_for(tiny_cfg_dict, engine, corrupt=0.4, corrupt_kind="huge")
    run(unbounded)
    assert max(t.abs().max() for t in unbounded.params.values()) > 1e4  # what the bound is for
    sim = sim_for(tiny_cfg_dict, engine, corrupt=0.4, corrupt_kind="huge", max_update_norm=100.0)
    records = run(sim)
    excluded = [e for r in records for e in r.events if e.kind == "excluded"]
    assert excluded and all("exceeds max_update_norm" in e.detail for e in excluded)
    assert max(t.abs().max() for t in sim.params.values()) < 100


def test_round_without_updates_keeps_the_model_and_says_so(tiny_cfg_dict):
    sim = sim_for(tiny_cfg_dict, "batched", dropout=0.999)
    before = {k: v.clone() for k, v in sim.params.items()}
    record = sim.run_round()
    assert record.dropped == record.clients and record.train_loss is None
    assert any(e.kind == "no_updates" and "unchanged" in e.detail for e in record.events)
    assert all(torch.equal(before[k], sim.params[k]) for k in before)


@pytest.mark.parametrize("engine", ["reference", "batched"])
def test_round_whose_sums_overflow_keeps_the_model_and_says_so(tiny_cfg_dict, engine, monkeypatch):
    def enormous(updates, clients, kind):  # finite values whose weighted sums leave float32's range
        for item in updates:
            for t in item.params.values():
                t.copy_(t.clamp(-1, 1) * 3e38)

    monkeypatch.setattr(simulation, "corrupt", enormous)
    sim = sim_for(tiny_cfg_dict, engine)
    before = {k: v.clone() for k, v in sim.params.items()}
    record = sim.run_round()
    assert all(torch.equal(before[k], sim.params[k]) for k in before)
    excluded = [e for e in record.events if e.kind == "excluded"]
    assert len(excluded) == record.clients and all("overflowed" in e.detail for e in excluded)
    assert any(e.kind == "no_updates" for e in record.events) and record.train_loss is None


def test_pick_clients_rate_and_determinism():
    clients = list(range(1000))
    picked = pick_clients(clients, 0.3, seed=1, round_idx=2, salt=1)
    assert 240 < len(picked) < 360 and picked == pick_clients(clients, 0.3, seed=1, round_idx=2, salt=1)
    assert picked != pick_clients(clients, 0.3, seed=1, round_idx=3, salt=1)
    assert pick_clients(clients, 0.0, seed=1, round_idx=2, salt=1) == set()


def test_corrupt_and_drop_on_stacked_and_single_updates():
    idx = (torch.tensor([[0, 1], [2, 3], [1, 2]]),)
    batch = ClientBatch((4, 5, 6), torch.ones(3), idx, {"w": torch.zeros(3, 2, 2)})
    single = ClientUpdate(7, 1.0, (torch.tensor([0, 1]),), {"w": torch.zeros(2, 2)})
    corrupt([batch, single], {5, 7}, "inf")
    w = as_dense(batch.params["w"])
    assert torch.isinf(w[1]).any() and torch.isfinite(w[[0, 2]]).all()
    assert torch.isinf(single.params["w"]).any()
    kept = without_clients([batch, single], {5, 7})
    assert len(kept) == 1 and isinstance(kept[0], ClientBatch)
    assert kept[0].clients == (4, 6) and torch.equal(kept[0].indices[0], idx[0][[0, 2]])
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt([batch], {4}, "zero")
