"""Checkpoints, resume after a crash or a signal, and refusal of damaged files."""

import json
import signal
import subprocess
import sys
import time

import pytest
import tomli_w
import torch
from safetensors.torch import load_file, save_file

from fedbrb_fast.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fedbrb_fast.config import config_from_dict
from fedbrb_fast.outputs import read_metrics
from fedbrb_fast.runner import CHECKPOINT, MODEL, resume_experiment, run_experiment


def params():
    g = torch.Generator().manual_seed(0)
    return {"a": torch.randn(3, 4, generator=g), "b": torch.randn(5, generator=g)}


def test_round_trip(tmp_path):
    save_checkpoint(tmp_path / "c.safetensors", params(), {"round": 3, "rows": [{"x": 1}]})
    p, state = load_checkpoint(tmp_path / "c.safetensors")
    assert all(torch.equal(p[k], params()[k]) for k in p) and state == {"round": 3, "rows": [{"x": 1}]}
    assert [f.name for f in tmp_path.iterdir()] == ["c.safetensors"]  # no temporary left behind


def test_truncated_checkpoint_is_refused(tmp_path):
    f = tmp_path / "c.safetensors"
    save_checkpoint(f, params(), {"round": 1})
    data = f.read_bytes()
    for cut in (4, 40, len(data) - 3):
        f.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated|corrupt"):
            load_checkpoint(f)


def test_tampered_checkpoint_is_refused(tmp_path):
    f = tmp_path / "c.safetensors"
    save_checkpoint(f, params(), {"round": 1})
    data = bytearray(f.read_bytes())
    data[-2] ^= 0xFF  # flip bits inside the last tensor
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(f)


def test_foreign_and_missing_files_are_refused(tmp_path):
    save_file(params(), tmp_path / "plain.safetensors")
    with pytest.raises(CheckpointError, match="not written by fedbrb_fast"):
        load_checkpoint(tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(CheckpointError, match="corrupt header"):
        load_checkpoint(tmp_path / "junk.safetensors")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.safetensors")


def cfg_dict(tiny_cfg_dict, out, rounds=6, **train):
    return {**tiny_cfg_dict, "rounds": rounds, "output_dir": str(out), "checkpoint": {"every": 1},
            "train": {**tiny_cfg_dict["train"], **train}}


def comparable(rows):
    return [{k: v for k, v in r.items() if not k.startswith("sec_")} for r in rows]


@pytest.mark.slow  # three runs
@pytest.mark.parametrize("model", [None, {"arch": "preresnet18", "widths": [4, 4, 4, 4], "norm": "bn"}],
                         ids=["mlp", "preresnet18"])
def test_resume_after_crash_equals_uninterrupted_run(tmp_path, tiny_cfg_dict, crash_in_round, model):
    if model is not None:  # a non-chain layout, two clients a round
        tiny_cfg_dict = {**tiny_cfg_dict, "model": model, "clients": {**tiny_cfg_dict["clients"], "per_round": 2}}
    full = run_experiment(config_from_dict(cfg_dict(tiny_cfg_dict, tmp_path / "full", rounds=5)))
    raw = cfg_dict(tiny_cfg_dict, tmp_path / "crash", rounds=5)
    raw["checkpoint"] = {"every": 2}
    disarm = crash_in_round(4)
    with pytest.raises(SystemExit):
        run_experiment(config_from_dict(raw))
    disarm()
    with open(tmp_path / "crash" / "metrics.jsonl", "a") as f:
        f.write('{"round": 99, "half a li')  # a write cut short by the crash
    assert [r["round"] for r in read_metrics(tmp_path / "crash" / "metrics.jsonl")] == [1, 2, 3]
    resumed = resume_experiment(tmp_path / "crash")
    assert comparable(resumed.rows) == comparable(full.rows)
    assert comparable(read_metrics(tmp_path / "crash" / "metrics.jsonl")) == comparable(full.rows)
    a, b = load_file(tmp_path / "full" / MODEL), load_file(tmp_path / "crash" / MODEL)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow  # over 1 s: runs in make test, not make test-fast
def test_resume_refuses_another_config(tmp_path, tiny_cfg_dict):
    run_experiment(config_from_dict(cfg_dict(tiny_cfg_dict, tmp_path / "r", rounds=2)))
    cfg_file = tmp_path / "r" / "config.toml"
    cfg_file.write_text(cfg_file.read_text().replace("lr = 0.05", "lr = 0.07"))
    with pytest.raises(CheckpointError, match="different config"):
        resume_experiment(tmp_path / "r")


def cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "fedbrb_fast.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def wait_for_rounds(path, n, proc, timeout=120):
    start = time.time()
    while time.time() - start < timeout:
        if path.exists() and len(read_metrics(path)) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.communicate()}")
        time.sleep(0.02)
    raise AssertionError("run made no progress")


def run_cfg_file(tmp_path, tiny_cfg_dict, name, rounds, checkpoint_every=1):
    raw = cfg_dict(tiny_cfg_dict, tmp_path / name, rounds=rounds)
    raw["checkpoint"] = {"every": checkpoint_every}
    raw["clients"] = {**raw["clients"], "num_clients": 40, "per_round": 20}
    raw["model"] = {**raw["model"], "hidden": [128, 128]}
    f = tmp_path / f"{name}.toml"
    f.write_text(tomli_w.dumps(raw))
    return f


@pytest.mark.slow  # CLI processes
def test_sigkill_mid_run_then_resume_is_exact(tmp_path, tiny_cfg_dict):
    """A real process, really killed (SIGKILL) while training, resumed from its checkpoint."""
    rounds = 40  # far more than the kill leaves time for, on any machine
    ref = cli("run", str(run_cfg_file(tmp_path, tiny_cfg_dict, "ref", rounds)))
    assert ref.wait(timeout=300) == 0, ref.communicate()
    proc = cli("run", str(run_cfg_file(tmp_path, tiny_cfg_dict, "killed", rounds)))
    wait_for_rounds(tmp_path / "killed" / "metrics.jsonl", 3, proc)
    proc.send_signal(signal.SIGKILL)  # somewhere inside a round
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    done = len(read_metrics(tmp_path / "killed" / "metrics.jsonl"))
    assert done < rounds, "the kill came too late to test anything"
    again = cli("run", "--resume", str(tmp_path / "killed"))
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert comparable(read_metrics(tmp_path / "killed" / "metrics.jsonl")) == \
        comparable(read_metrics(tmp_path / "ref" / "metrics.jsonl"))
    a, b = load_file(tmp_path / "ref" / MODEL), load_file(tmp_path / "killed" / MODEL)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow  # CLI processes
def test_sigterm_writes_checkpoint_and_exits_cleanly(tmp_path, tiny_cfg_dict):
    f = run_cfg_file(tmp_path, tiny_cfg_dict, "term", 200, checkpoint_every=0)  # only the signal writes one
    proc = cli("run", str(f))
    wait_for_rounds(tmp_path / "term" / "metrics.jsonl", 2, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "--resume" in err
    _, state = load_checkpoint(tmp_path / "term" / CHECKPOINT)
    assert state["round"] == len(read_metrics(tmp_path / "term" / "metrics.jsonl")) < 200
    assert json.loads(json.dumps(state["rows"]))[-1]["round"] == state["round"]


@pytest.mark.slow  # CLI processes
def test_cli_resume_errors(tmp_path):
    p = cli("run", "--resume", str(tmp_path / "nothing"))
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and "no such folder" in err
    (tmp_path / "x").mkdir()
    p = cli("run", "--resume", str(tmp_path / "x"))
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and "no run to resume there (no config.toml)" in err
    p = cli("run", "cfg.toml", "--resume", str(tmp_path / "x"))
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and "give no CONFIG" in err
