import pytest
import torch

from fedbrb_fast.aggregation import ClientUpdate, aggregate, rule_for_method
from fedbrb_fast.config import config_from_dict
from fedbrb_fast.engines import Simulation, build_federated_data
from fedbrb_fast.models.layout import extract
from fedbrb_fast.plans import make_round_plans, sample_clients
from fedbrb_fast.seeding import STREAM_TRAIN, torch_generator
from fedbrb_fast.training import LocalTraining, train_client

METHODS = ["fedbrb", "fedrolex", "heterofl", "fd", "fedavg", "fedavg_small"]


@pytest.fixture(scope="module")
def digits_data():
    cfg = config_from_dict({"data": {"dataset": "digits"}, "clients": {"num_clients": 12, "per_round": 5}})
    return build_federated_data(cfg)


def make_cfg(base, **sections):
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in sections.items():
        if isinstance(value, dict):
            raw[key] = {**raw.get(key, {}), **value}
        else:
            raw[key] = value
    return config_from_dict(raw)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch,norm,engine", [("mlp", "none", "reference"), ("mlp", "bn", "batched"),
                                              pytest.param("cnn", "gn", "reference", marks=pytest.mark.slow),
                                              pytest.param("cnn", "bn", "batched", marks=pytest.mark.slow)])
def test_every_method_runs_and_stays_finite(tiny_cfg_dict, digits_data, method, arch, norm, engine):
    cfg = make_cfg(tiny_cfg_dict, method={"name": method}, train={"engine": engine},
                   model={"arch": arch, "hidden": [16, 16], "norm": norm, "norm_groups": 4})
    sim = Simulation(cfg, digits_data)
    records = [sim.run_round() for _ in range(cfg.rounds)]
    assert sim.finished and [r.round for r in records] == [1, 2]
    assert all(r.accuracy is not None and 0 <= r.accuracy <= 1 and r.loss is not None and r.loss > 0 for r in records)
    assert all(torch.isfinite(t).all() for t in sim.params.values())
    assert records[0].clients == 5 and records[0].excluded == 0
    assert set(records[0].seconds) >= {"plan", "gather", "train", "aggregate", "evaluate", "total"}
    assert (records[0].lam is not None) == (method == "fedbrb")


@pytest.mark.parametrize("engine", ["reference", "batched"])
def test_same_config_and_seed_give_identical_results(tiny_cfg_dict, engine):
    cfg = make_cfg(tiny_cfg_dict, method={"name": "fd"}, rounds=3, train={"engine": engine})
    runs = []
    for _ in range(2):
        sim = Simulation(cfg)
        runs.append(([sim.run_round().flat() for _ in range(3)], sim.state_dict()))
    (rows_a, pa), (rows_b, pb) = runs
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("sec_")} for r in rows]  # noqa: E731
    assert strip(rows_a) == strip(rows_b)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    other = Simulation(make_cfg(tiny_cfg_dict, method={"name": "fd"}, seed=4, train={"engine": engine}))
    other.run_round()
    assert not torch.equal(other.params["hidden0.weight"], pa["hidden0.weight"])


@pytest.mark.parametrize("method", ["fedbrb", "fd"])
def test_round_equals_the_spec_written_out(tiny_cfg_dict, digits_data, method):
    """plan -> extract -> train each client with its own generator -> aggregate, by hand."""
    cfg = make_cfg(tiny_cfg_dict, method={"name": method, "lam": 0.3}, clients={"label_mask": True},
                   train={"engine": "reference"}, aggregation={"backend": "reference"})
    sim = Simulation(cfg, digits_data)
    start = sim.state_dict()
    sim.run_round()
    clients = sample_clients(0, 12, 5, cfg.seed)
    plans = make_round_plans(method, 0, clients, [sim.client_widths[c] for c in clients],
                             group_sizes=sim.model.layout.group_sizes, num_blocks=cfg.num_blocks, seed=cfg.seed)
    hp = LocalTraining(1, 8, 0.05, cfg.train.momentum, cfg.train.weight_decay, None)
    updates = []
    for p in plans:
        x, y = digits_data.client_data(p.client)
        present = torch.zeros(10, dtype=torch.bool)
        present[y.unique()] = True
        res = train_client(sim.model, extract(start, sim.model.layout, p.indices), x, y, beta=p.width, hp=hp,
                           generator=torch_generator(cfg.seed, STREAM_TRAIN, 0, p.client), label_mask=present)
        rows = present.float()
        updates.append(ClientUpdate(p.client, float(len(y)), p.indices, res.params,
                                    {"out.weight": rows[:, None], "out.bias": rows}))
    expected = aggregate(start, sim.model.layout, updates, rule_for_method(method, 0.3, cfg.num_blocks)).params
    assert all(torch.equal(expected[k], sim.params[k]) for k in expected)


def test_uniform_weighting_and_lr_schedule_reach_the_round(tiny_cfg_dict, digits_data):
    cfg = make_cfg(tiny_cfg_dict, rounds=3, clients={"weighting": "uniform"},
                   train={"lr_schedule": "multistep", "lr_milestones": [1, 2], "lr_gamma": 0.5})
    sim = Simulation(cfg, digits_data)
    assert [sim.run_round().lr for _ in range(3)] == [0.05, 0.025, 0.0125]


def test_eval_cadence(tiny_cfg_dict, digits_data):
    cfg = make_cfg(tiny_cfg_dict, rounds=5, eval={"every": 2})
    sim = Simulation(cfg, digits_data)
    accs = [sim.run_round().accuracy for _ in range(5)]
    assert [a is not None for a in accs] == [False, True, False, True, True]  # and always at the end


def test_fedavg_small_global_model_has_width_beta_min(tiny_cfg_dict, digits_data):
    sim = Simulation(make_cfg(tiny_cfg_dict, method={"name": "fedavg_small"}), digits_data)
    assert sim.model.layout.group_sizes == (8, 4)  # [32, 16] / K=4


def test_lam_schedule_reaches_the_round(tiny_cfg_dict, digits_data):
    cfg = make_cfg(tiny_cfg_dict, rounds=3, method={"lam": 0.8, "lam_schedule": "linear", "lam_end": 0.2})
    sim = Simulation(cfg, digits_data)
    assert [sim.run_round().lam for _ in range(3)] == pytest.approx([0.8, 0.5, 0.2])


@pytest.mark.parametrize("backend", ["torch", "numba", "auto"])
def test_fast_aggregation_backends_in_the_simulation_match_the_reference(tiny_cfg_dict, digits_data, backend):
    params = {}
    for b in ("reference", backend):
        sim = Simulation(make_cfg(tiny_cfg_dict, rounds=2, clients={"label_mask": True}, aggregation={"backend": b}),
                         digits_data)
        sim.run_round()
        sim.run_round()
        params[b] = sim.params
    for k in params["reference"]:
        assert torch.allclose(params["reference"][k], params[backend][k], atol=1e-5, rtol=1e-4), k
