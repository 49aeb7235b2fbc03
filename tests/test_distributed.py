"""The distributed engine: sharding, config, and real 2-process runs on the CPU (gloo) against the
single-process batched engine; a rank that dies or hangs; resume with another world size."""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import pytest
import tomli_w
import torch
from safetensors.torch import load_file

from fedbrb_fast.config import ConfigError, config_from_dict
from fedbrb_fast.data import load_dataset
from fedbrb_fast.engines import DistributedError
from fedbrb_fast.engines.process_group import join_process_group
from fedbrb_fast.engines.sharding import client_costs, shard_plans
from fedbrb_fast.models import MLP
from fedbrb_fast.outputs import read_metrics
from fedbrb_fast.plans import make_round_plans
from fedbrb_fast.runner import MODEL, resume_experiment, run_experiment
from fedbrb_fast.training import evaluate
from fedbrb_fast.training.evaluate import evaluation_shard, evaluation_sums

ATOL = 1e-5  # summation order: ranks add their partial sums, then the all-reduce adds those


# --- sharding -------------------------------------------------------------------------------------

NET = MLP(12, [16, 8], 5)


def round_plans(n=23):
    widths = [random.Random(c).choice([0.25, 0.5, 1.0]) for c in range(n)]
    return make_round_plans("fedbrb", 3, list(range(n)), widths, group_sizes=NET.layout.group_sizes, num_blocks=4,
                            seed=1)


@pytest.mark.parametrize("world", [1, 2, 3, 7, 40])
def test_shards_are_deterministic_disjoint_covering_and_balanced(world):
    plans = round_plans()
    cost = client_costs(plans, {p.client: 1 + (p.client * 7) % 5 for p in plans}, NET.layout)
    shards = shard_plans(plans, world, cost)
    shuffled = random.Random(0).sample(plans, len(plans))
    clients_of = lambda shards: [[p.client for p in s] for s in shards]  # noqa: E731
    assert clients_of(shard_plans(shuffled, world, cost)) == clients_of(shards)
    clients = [p.client for s in shards for p in s]
    assert len(shards) == world and sorted(clients) == list(range(len(plans)))  # disjoint and covering
    loads = [sum(cost[p.client] for p in s) for s in shards]
    assert max(loads) - min(loads) <= max(cost.values())  # greedy LPT never overshoots by more than one client


def test_costs_count_local_steps_times_sub_model_parameters():
    plan = next(p for p in round_plans() if p.width == 0.5)  # hidden 8 and 4 of 16 and 8
    assert client_costs([plan], {plan.client: 3}, NET.layout) == {plan.client: 3 * (8 * 12 + 8 + 4 * 8 + 4 + 5 * 4 + 5)}


def test_shard_plans_rejects_an_empty_world():
    with pytest.raises(ValueError, match="world_size"):
        shard_plans(round_plans(), 0, {})


@pytest.mark.parametrize("norm", ["none", "bn"])
def test_evaluation_shards_cover_the_test_set_and_their_sums_add_up(norm):
    data = load_dataset("digits", seed=0)
    model = MLP(64, [16], 10, norm=norm)
    params = model.init(torch.Generator().manual_seed(0))
    x, y, bs = data.x_test, data.y_test, 50
    for world in (2, 3, 9):
        shards = [evaluation_shard(model, len(y), bs, r, world) for r in range(world)]
        assert [i for s in shards for i in s] == list(range(len(y)))
        if norm == "bn":  # static BatchNorm: the single-process batches, whole
            assert all(s.start % bs == 0 for s in shards)
        parts = [evaluation_sums(model, params, x, y, bs, s) for s in shards]
        acc, loss = evaluate(model, params, x, y, bs)
        assert sum(c for c, _ in parts) / len(y) == pytest.approx(acc, abs=1.5 / len(y))
        assert sum(s for _, s in parts) / len(y) == pytest.approx(loss, rel=1e-5)
    one_batch = [evaluation_shard(model, len(y), 1000, r, 2) for r in range(2)]  # a test set of one batch
    assert one_batch == ([range(0, 179), range(179, 359)] if norm == "none" else [range(0, 0), range(0, 359)])


# --- config and process group ---------------------------------------------------------------------

def test_config_validation_names_the_field(tiny_cfg_dict):
    with pytest.raises(ConfigError, match="aggregation.backend: 'reference' computes no partial sums"):
        config_from_dict({**tiny_cfg_dict, "train": {"engine": "distributed"}, "aggregation": {"backend": "reference"}})
    for bad in (0, -1, float("nan")):
        with pytest.raises(ConfigError, match="train.dist_timeout_s"):
            config_from_dict({**tiny_cfg_dict, "train": {"engine": "distributed", "dist_timeout_s": bad}})


def test_an_incomplete_torchrun_environment_is_refused(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DistributedError, match="incomplete torchrun environment: MASTER_ADDR, MASTER_PORT unset"):
        join_process_group(torch.device("cpu"), 10)


def comparable(rows):
    return [{k: v for k, v in r.items() if not k.startswith("sec_")} for r in rows]


def test_without_torchrun_it_runs_as_one_process_equal_to_batched(tiny_cfg_dict, tmp_path):
    batched = run_experiment(config_from_dict({**tiny_cfg_dict, "output_dir": str(tmp_path / "b")}))
    raw = {**tiny_cfg_dict, "output_dir": str(tmp_path / "d"),
           "train": {**tiny_cfg_dict["train"], "engine": "distributed"}}
    with pytest.warns(RuntimeWarning, match="running as a single process \\(world size 1\\)"):
        single = run_experiment(config_from_dict(raw))
    assert comparable(single.rows) == comparable(batched.rows)
    a, b = load_file(tmp_path / "b" / MODEL), load_file(tmp_path / "d" / MODEL)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ranks_other_than_0_write_nothing(tiny_cfg_dict, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")  # what torchrun tells rank 1 (no process group needed for the batched engine)
    result = run_experiment(config_from_dict({**tiny_cfg_dict, "output_dir": str(tmp_path / "r1")}))
    assert len(result.rows) == tiny_cfg_dict["rounds"] and not (tmp_path / "r1").exists()


# --- real process groups --------------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank, world, port):
    # one thread per rank: two ranks share this machine's cores
    return {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}


def launch(*args, world=2):
    """`fedbrb-fast ARGS` on `world` ranks, started the way torchrun starts them (env://)."""
    port = free_port()
    return [subprocess.Popen([sys.executable, "-m", "fedbrb_fast.cli", *args], env=rank_env(r, world, port),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(world)]


def torchrun(*args, world=2):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
                             "-m", "fedbrb_fast.cli", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(procs, timeout=120):
    outs = [p.communicate(timeout=timeout) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    return outs


def config_file(tmp_path, raw, name):
    raw = {**raw, "output_dir": str(tmp_path / name), "train": {**raw["train"], "engine": "distributed"}}
    f = tmp_path / f"{name}.toml"
    f.write_text(tomli_w.dumps(raw))
    return f, raw


def assert_close_runs(dist_dir, single_dir, atol=ATOL):
    """Metrics rows (accuracy up to one of the 359 test predictions flipped by rounding; losses to
    atol) and final global parameters within summation-order tolerance."""
    got = comparable(read_metrics(dist_dir / "metrics.jsonl"))
    want = comparable(read_metrics(single_dir / "metrics.jsonl"))
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        for k in g:
            if isinstance(w[k], float):
                assert g[k] == pytest.approx(w[k], abs=atol if k != "accuracy" else 3e-3), (g["round"], k)
            else:
                assert g[k] == w[k], (g["round"], k)
    a, b = load_file(dist_dir / MODEL), load_file(single_dir / MODEL)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=atol, rtol=0) for k in a)


def single_process_run(raw, tmp_path, name):
    """The same experiment on the single-process batched engine."""
    cfg = {**raw, "output_dir": str(tmp_path / name), "train": {**raw["train"], "engine": "batched"}}
    return run_experiment(config_from_dict(cfg))


@pytest.mark.slow  # rank processes
@pytest.mark.parametrize("method,extra,launcher,model", [
    ("fedbrb", {"faults": {"dropout": 0.2, "corrupt": 0.2, "corrupt_kind": "nan", "max_update_norm": 0.9},
                "clients": {"label_mask": True}}, torchrun, None),
    ("heterofl", {}, launch, None),
    # A layout that is not a chain. Without norms or scaler: on 8x8 digits the last stage is 1x1,
    # where a norm over the one or two channels of a narrow client turns float32 summation-order
    # differences (ranks train other chunks of clients) into different models within a round, and
    # the scaler without norms makes training diverge.
    ("fedbrb", {}, launch, {"arch": "preresnet18", "widths": [8, 8, 8, 8], "norm": "none", "scaler": False}),
])
def test_two_ranks_equal_the_single_process_run(tiny_cfg_dict, tmp_path, method, extra, launcher, model):
    raw = {**tiny_cfg_dict, "rounds": 4, "method": {"name": method, "lam": 0.5},
           "model": model or tiny_cfg_dict["model"],
           **{k: {**tiny_cfg_dict.get(k, {}), **v} for k, v in extra.items()}}
    f, raw = config_file(tmp_path, raw, "dist")
    procs = launcher("run", str(f))
    finish(procs if isinstance(procs, list) else [procs])
    single = single_process_run(raw, tmp_path, "single")
    if extra:  # the faults really happened, and in the same way
        assert sum(r["dropped"] for r in single.rows) > 0 and sum(r["excluded"] for r in single.rows) > 1
        kinds = {json.loads(line)["detail"].split(" ")[0] for line in open(tmp_path / "single" / "events.jsonl")}
        assert {"never", "injected", "non-finite", "update"} <= kinds
    else:  # every update trained to finite values and was aggregated
        assert all(r["excluded"] == 0 and r["dropped"] == 0 for r in single.rows)
    assert_close_runs(tmp_path / "dist", tmp_path / "single")
    events = lambda d: [(e["round"], e["client"], e["kind"]) for e in read_metrics(d / "events.jsonl")]  # noqa: E731
    assert events(tmp_path / "dist") == events(tmp_path / "single")


LONG = 20  # rounds: far more than a test waits for, few enough that float rounding stays small (SGD is chaotic)


def long_run(tiny_cfg_dict, tmp_path, name, **train):
    """A run checkpointed every round, with a learning rate at which training is stable."""
    raw = {**tiny_cfg_dict, "rounds": LONG, "checkpoint": {"every": 1},
           "train": {**tiny_cfg_dict["train"], "lr": 0.01, **train}}
    return config_file(tmp_path, raw, name)


def wait_for_rounds(path, n, procs, timeout=60):
    start = time.time()
    while time.time() - start < timeout:
        if path.exists() and len(read_metrics(path)) >= n:
            return
        if any(p.poll() is not None for p in procs):
            raise AssertionError(f"a rank ended early: {[p.communicate() for p in procs]}")
        time.sleep(0.01)
    raise AssertionError("the run made no progress")


@pytest.mark.slow  # rank processes
def test_a_killed_rank_fails_the_run_fast_and_it_resumes_on_one_rank(tiny_cfg_dict, tmp_path):
    f, raw = long_run(tiny_cfg_dict, tmp_path, "killed")
    procs = launch("run", str(f))
    wait_for_rounds(tmp_path / "killed" / "metrics.jsonl", 2, procs)
    procs[1].send_signal(signal.SIGKILL)  # rank 1 dies somewhere inside a round
    start = time.time()
    _, err = procs[0].communicate(timeout=30)
    assert time.time() - start < 10, "the surviving rank took too long to notice"
    assert procs[0].returncode == 1, err
    assert "rank 0 of 2:" in err and "another rank has most likely died" in err and "--resume" in err
    procs[1].wait(timeout=10)
    done = len(read_metrics(tmp_path / "killed" / "metrics.jsonl"))
    assert done < LONG, "the kill came too late to test anything"
    with pytest.warns(RuntimeWarning, match="world size 1"):
        resume_experiment(tmp_path / "killed")  # 2 ranks -> 1
    single_process_run(raw, tmp_path, "single")
    assert_close_runs(tmp_path / "killed", tmp_path / "single")


@pytest.mark.slow  # rank processes
def test_a_hung_rank_fails_the_run_after_the_timeout(tiny_cfg_dict, tmp_path):
    f, _ = long_run(tiny_cfg_dict, tmp_path, "hung", dist_timeout_s=2)
    procs = launch("run", str(f))
    try:
        wait_for_rounds(tmp_path / "hung" / "metrics.jsonl", 2, procs)
        procs[1].send_signal(signal.SIGSTOP)  # alive, holding its sockets, answering nothing
        start = time.time()
        _, err = procs[0].communicate(timeout=30)
        assert 1.5 < time.time() - start < 15
        assert procs[0].returncode == 1, err
        assert "did not answer within train.dist_timeout_s = 2 s" in err and "Timed out" in err
    finally:
        for p in procs:
            p.kill()
            p.wait()


@pytest.mark.slow  # rank processes
def test_a_one_process_checkpoint_resumes_on_two_ranks(tiny_cfg_dict, tmp_path, crash_in_round):
    f, raw = config_file(tmp_path, {**tiny_cfg_dict, "rounds": 5, "checkpoint": {"every": 2}}, "grown")
    disarm = crash_in_round(4)
    with pytest.warns(RuntimeWarning, match="world size 1"), pytest.raises(SystemExit):
        run_experiment(config_from_dict(raw))
    disarm()
    finish(launch("run", "--resume", str(tmp_path / "grown")))  # checkpoint of round 2: 1 rank -> 2
    single_process_run(raw, tmp_path, "single")
    assert_close_runs(tmp_path / "grown", tmp_path / "single")


@pytest.mark.slow  # rank processes
def test_sigterm_stops_every_rank_after_the_same_round_then_resumes(tiny_cfg_dict, tmp_path):
    f, raw = long_run(tiny_cfg_dict, tmp_path, "stopped")
    procs = launch("run", str(f))
    wait_for_rounds(tmp_path / "stopped" / "metrics.jsonl", 2, procs)
    for p in procs:  # as torchrun passes a signal on to its workers
        p.send_signal(signal.SIGTERM)
    outs = [p.communicate(timeout=30) for p in procs]
    assert [p.returncode for p in procs] == [130, 130], outs
    stopped = [int(err.split("interrupted after round ")[1].split(";")[0]) for _, err in outs]
    assert stopped[0] == stopped[1] < LONG
    assert len(read_metrics(tmp_path / "stopped" / "metrics.jsonl")) == stopped[0]
    finish(launch("run", "--resume", str(tmp_path / "stopped")))
    single_process_run(raw, tmp_path, "single")
    assert_close_runs(tmp_path / "stopped", tmp_path / "single")
