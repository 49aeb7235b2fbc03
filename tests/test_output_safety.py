"""A run never replaces an earlier run's results unasked, and every failure a user can cause or meet
ends in one `error:` line (exit 2: bad input, 1: a failure during the run) with files left whole."""

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any

import pytest
import tomli_w
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import fedbrb_fast.outputs.run_folder as run_folder_module
import fedbrb_fast.runner as runner_module
from fedbrb_fast.checkpoint import load_checkpoint
from fedbrb_fast.cli import app
from fedbrb_fast.config import config_from_dict
from fedbrb_fast.engines import Simulation
from fedbrb_fast.outputs import CHECKPOINT, MODEL, read_metrics
from fedbrb_fast.outputs.run_folder import RUN_FILES
from fedbrb_fast.runner import compare_methods, run_experiment

cli = CliRunner()


# --- helpers ---------------------------------------------------------------------------------------

def cfg_file(tmp_path, raw, name="cfg.toml"):
    f = tmp_path / name
    f.write_text(tomli_w.dumps(raw))
    return f


def with_(raw, **changes):
    """`raw` with top-level keys replaced and sections merged."""
    out = dict(raw)
    for key, value in changes.items():
        out[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return out


def tree_digest(folder):
    """SHA-256 of every file under `folder`, by relative path: equal digests mean byte-for-byte equal trees."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def error_line(res, code, *fragments):
    """The exit code is `code` and the output has exactly one `error:` line, holding every fragment,
    and no traceback."""
    assert res.exit_code == code, res.output
    lines = [line for line in res.stderr.replace("\r", "\n").splitlines() if line.startswith("error:")]
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def comparable(rows):
    return [{k: v for k, v in r.items() if not k.startswith("sec_")} for r in rows]


def same_model(a, b):
    ma, mb = load_file(a / MODEL), load_file(b / MODEL)
    return ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)


@pytest.fixture
def data_loads(monkeypatch):
    """The configs whose data was loaded: a refusal "before any work" leaves this empty."""
    loads: list[str] = []
    real = runner_module.build_federated_data

    def counting(cfg):
        loads.append(cfg.method.name)
        return real(cfg)

    monkeypatch.setattr(runner_module, "build_federated_data", counting)
    return loads


def assert_whole_logs(out):
    """Every log ends in a complete line, each JSONL line parses, and the JSONL and CSV logs hold the
    same rounds."""
    for name in ("metrics.jsonl", "metrics.csv", "events.jsonl"):
        text = (out / name).read_text()
        assert text == "" or text.endswith("\n"), (name, text[-80:])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for line in (out / "events.jsonl").read_text().splitlines():
        json.loads(line)
    csv_rounds = [int(line.split(",")[0]) for line in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert [r["round"] for r in rows] == csv_rounds == list(range(1, len(rows) + 1))
    return rows


# --- an earlier run is never replaced unasked --------------------------------------------------------

def test_a_second_run_is_refused_and_the_first_stays_byte_for_byte(tmp_path, tiny_cfg_dict, data_loads):
    f = cfg_file(tmp_path, tiny_cfg_dict)
    out = tmp_path / "run"
    assert cli.invoke(app, ["run", str(f)]).exit_code == 0
    before, data_loads[:] = tree_digest(out), []
    res = cli.invoke(app, ["run", str(f), "--set", "rounds=1", "--set", "seed=5"])
    error_line(res, 2, f"{str(out)!r} already holds a finished fedbrb run (2 of 2 rounds)", "nothing was changed",
               f"fedbrb-fast run --resume {out}", "--overwrite")
    res = cli.invoke(app, ["compare", str(f), "--methods", "fedbrb,heterofl"])
    error_line(res, 2, "already holds a finished fedbrb run", "--resume", "--overwrite")
    assert tree_digest(out) == before and data_loads == []  # refused before the data was loaded


def test_an_unfinished_run_is_described_and_resume_continues_it_exactly(tmp_path, tiny_cfg_dict, crash_in_round):
    raw = with_(tiny_cfg_dict, rounds=3, checkpoint={"every": 1})
    f = cfg_file(tmp_path, raw)
    disarm = crash_in_round(2)
    with pytest.raises(SystemExit):
        run_experiment(config_from_dict(raw))
    disarm()
    out = tmp_path / "run"
    before = tree_digest(out)
    res = cli.invoke(app, ["run", str(f)])
    error_line(res, 2, "an unfinished fedbrb run (1 of 3 rounds, checkpoint present)",
               f"fedbrb-fast run --resume {out}")
    assert tree_digest(out) == before
    res = cli.invoke(app, ["run", "--resume", str(out)])
    assert res.exit_code == 0, res.output
    ref = run_experiment(config_from_dict(with_(raw, output_dir=str(tmp_path / "ref"))))
    assert comparable(read_metrics(out / "metrics.jsonl")) == comparable(ref.rows)
    assert same_model(out, tmp_path / "ref")


def test_overwrite_removes_every_file_of_the_earlier_results(tmp_path, tiny_cfg_dict):
    f = cfg_file(tmp_path, tiny_cfg_dict)
    out = tmp_path / "run"
    assert cli.invoke(app, ["compare", str(f), "--methods", "fedbrb,heterofl"]).exit_code == 0
    (out / "notes.txt").write_text("mine")  # not a file any run writes: left alone
    (out / "heterofl" / ".metrics.jsonl.abc123.tmp").write_text("a write a crash left")

    res = cli.invoke(app, ["run", str(f), "--set", "rounds=1", "--set", "method.name=fd", "--overwrite"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == sorted([*RUN_FILES, "notes.txt"])  # no comparison, no subruns
    assert [r["method"] for r in read_metrics(out / "metrics.jsonl")] == ["fd"]
    assert json.loads((out / "summary.json").read_text())["rounds"] == 1 and (out / "notes.txt").read_text() == "mine"

    res = cli.invoke(app, ["compare", str(f), "--methods", "heterofl", "--overwrite"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["accuracy.png", "comparison.json", "comparison.md", "heterofl",
                                                     "notes.txt"]
    assert set(json.loads((out / "comparison.json").read_text())) == {"heterofl"}


def test_an_empty_folder_or_one_that_collects_runs_is_fine(tmp_path, tiny_cfg_dict):
    f = cfg_file(tmp_path, tiny_cfg_dict)
    (tmp_path / "run").mkdir()
    res = cli.invoke(app, ["run", str(f), "--set", "rounds=1"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(RUN_FILES)

    # runs kept side by side in subfolders are not a comparison: nothing to replace, even with --overwrite
    parent = tmp_path / "all"
    (parent / "old-run").mkdir(parents=True)
    shutil.copytree(tmp_path / "run", parent / "old-run", dirs_exist_ok=True)
    before = tree_digest(parent / "old-run")
    res = cli.invoke(app, ["run", str(f), "--set", "rounds=1", "--set", f"output_dir='{parent}'", "--overwrite"])
    assert res.exit_code == 0, res.output
    assert tree_digest(parent / "old-run") == before and (parent / "summary.json").is_file()


@pytest.mark.slow  # over 1 s: runs in make test, not make test-fast
def test_compare_resume_keeps_finished_runs_and_continues_the_unfinished(tmp_path, tiny_cfg_dict, monkeypatch):
    raw = with_(tiny_cfg_dict, rounds=3, checkpoint={"every": 1})
    f = cfg_file(tmp_path, raw)
    out = tmp_path / "run"
    original = Simulation.run_round

    def crash_in_fedbrb(self):
        if self.cfg.method.name == "fedbrb" and self.round_idx == 1:
            raise SystemExit("simulated crash")
        return original(self)

    monkeypatch.setattr(Simulation, "run_round", crash_in_fedbrb)
    with pytest.raises(SystemExit):
        compare_methods(config_from_dict(raw), ["heterofl", "fedbrb"])
    monkeypatch.setattr(Simulation, "run_round", original)
    heterofl_files = tree_digest(out / "heterofl")

    res = cli.invoke(app, ["compare", str(f), "--methods", "heterofl,fedbrb"])
    error_line(res, 2, "a comparison (fedbrb/: an unfinished fedbrb run (1 of 3 rounds, checkpoint present); "
                       "heterofl/: a finished heterofl run (3 of 3 rounds))", "--resume", "--overwrite")
    res = cli.invoke(app, ["compare", str(f), "--methods", "heterofl,fedbrb", "--set", "train.lr=0.07", "--resume"])
    error_line(res, 2, "of another config", str(out / "fedbrb"))
    res = cli.invoke(app, ["compare", str(f), "--methods", "fedbrb", "--resume"])
    error_line(res, 2, "a method not in --methods", str(out / "heterofl"))

    res = cli.invoke(app, ["compare", str(f), "--methods", "heterofl,fedbrb", "--resume"])
    assert res.exit_code == 0, res.output
    assert tree_digest(out / "heterofl") == heterofl_files  # finished: reused as it was
    ref = compare_methods(config_from_dict(with_(raw, output_dir=str(tmp_path / "ref"))), ["heterofl", "fedbrb"])
    for m in ("heterofl", "fedbrb"):
        assert comparable(read_metrics(out / m / "metrics.jsonl")) == \
            comparable(read_metrics(tmp_path / "ref" / m / "metrics.jsonl"))
        assert same_model(out / m, tmp_path / "ref" / m)
    assert json.loads((out / "comparison.json").read_text()).keys() == ref["summaries"].keys()


def test_a_suite_refuses_a_folder_holding_a_run_of_another_config(tmp_path, tiny_cfg_dict, data_loads):
    suite = {"name": "tiny", "seeds": [0], "methods": ["fedbrb"], "base": tiny_cfg_dict,
             "scenarios": [{"name": "w4", "set": ["clients.widths=['1/4']", "clients.proportions=[1]"]}]}
    suite_file = cfg_file(tmp_path, suite, "suite.toml")
    seed0 = tmp_path / "runs" / "tiny" / "w4" / "fedbrb" / "seed0"
    seed0.mkdir(parents=True)
    (seed0 / "config.toml").write_text('rounds = 9\n[method]\nname = "fedbrb"\n')
    (seed0 / "summary.json").write_text("{}\n")
    before = tree_digest(tmp_path / "runs")
    res = cli.invoke(app, ["suite", str(suite_file), "--out", str(tmp_path / "runs")])
    error_line(res, 2, "hold runs of another config", str(seed0), "a finished fedbrb run (0 of 9 rounds)",
               "--overwrite")
    assert tree_digest(tmp_path / "runs") == before and data_loads == []


# --- bad input: exit 2, one line naming the path and the problem, before any work --------------------

def test_output_dir_that_is_a_file(tmp_path, tiny_cfg_dict, data_loads):
    f = cfg_file(tmp_path, tiny_cfg_dict)
    (tmp_path / "run").write_text("a file")
    res = cli.invoke(app, ["run", str(f)])
    error_line(res, 2, f"output folder {str(tmp_path / 'run')!r}: it is a file, not a folder")
    res = cli.invoke(app, ["run", str(f), "--set", f"output_dir='{tmp_path / 'run' / 'sub'}'"])
    error_line(res, 2, f"{tmp_path / 'run'} is a file, not a folder")
    res = cli.invoke(app, ["compare", str(f), "--methods", "fedbrb"])
    error_line(res, 2, "is a file, not a folder")
    res = cli.invoke(app, ["run", "--resume", str(tmp_path / "run")])
    error_line(res, 2, "is a file, not a run folder")
    assert (tmp_path / "run").read_text() == "a file" and data_loads == []

    res = cli.invoke(app, ["run", str(f), "--debug"])  # the traceback only on request
    assert res.exit_code == 2 and "Traceback" in res.stderr and "OutputDirError" in res.stderr


def test_a_folder_without_write_permission(tmp_path, tiny_cfg_dict, monkeypatch, data_loads):
    """Root ignores permission bits, so as root the refusal is simulated: the write probe fails with
    EACCES as the kernel would report it. As another user the folder is really made read-only.
    (`test_real_read_only_and_full_file_systems` covers a real refusal as root.)"""
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:
        def denied(*_, **kw):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), kw.get("dir"))
        monkeypatch.setattr(run_folder_module.tempfile, "mkstemp", denied)
        monkeypatch.setattr(run_folder_module.tempfile, "mkdtemp", denied)
    else:
        locked.chmod(0o555)
    f = cfg_file(tmp_path, with_(tiny_cfg_dict, output_dir=str(locked / "run")))
    res = cli.invoke(app, ["run", str(f)])
    error_line(res, 2, f"cannot write in {str(locked)!r}: no permission")
    assert data_loads == [] and list(locked.iterdir()) == []
    locked.chmod(0o755)


def test_a_missing_or_malformed_data_file(tmp_path, tiny_cfg_dict):
    nodata = tmp_path / "mnist"
    raw = with_(tiny_cfg_dict, data={"dataset": "mnist", "root": str(nodata), "partition": "iid"},
                model={"arch": "mlp", "hidden": [32, 16], "norm": "none"})
    f = cfg_file(tmp_path, raw)
    res = cli.invoke(app, ["run", str(f)])
    error_line(res, 2, f"folder {nodata} does not exist", "never downloaded")
    nodata.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (nodata / name).write_bytes(b"\x00\x00\x08")
    res = cli.invoke(app, ["run", str(f)])
    error_line(res, 2, str(nodata / "train-images-idx3-ubyte"), "too short")
    assert not (tmp_path / "run").exists()  # nothing written


def test_a_bad_checkpoint_on_resume(tmp_path, tiny_cfg_dict, data_loads):
    run_experiment(config_from_dict(tiny_cfg_dict))
    out = tmp_path / "run"
    ckpt = out / CHECKPOINT
    ckpt.write_bytes(ckpt.read_bytes()[:-100])
    before, data_loads[:] = tree_digest(out), []
    res = cli.invoke(app, ["run", "--resume", str(out)])
    error_line(res, 2, f"checkpoint {str(ckpt)!r} is truncated or corrupt")
    ckpt.unlink()
    res = cli.invoke(app, ["run", "--resume", str(out)])
    error_line(res, 2, "no checkpoint to continue from", "--overwrite")
    assert data_loads == [] and tree_digest(out) == {k: v for k, v in before.items() if k != CHECKPOINT}


def test_an_unexpected_error_is_one_line_and_its_traceback_is_on_request(tmp_path, tiny_cfg_dict, monkeypatch):
    def boom(self):
        raise RuntimeError("boom")

    monkeypatch.setattr(Simulation, "run_round", boom)
    f = cfg_file(tmp_path, tiny_cfg_dict)
    error_line(cli.invoke(app, ["run", str(f)]), 1, "unexpected RuntimeError: boom", "--debug")
    res = cli.invoke(app, ["run", str(f), "--overwrite", "--debug"])
    assert res.exit_code == 1 and "Traceback" in res.stderr and "boom" in res.stderr


# --- a write error during a run: exit 1, whole files, resumable --------------------------------------

@pytest.fixture
def full_disk(monkeypatch):
    """`arm(folder, matches, nth)`: the nth os.write to a file under `folder` whose name `matches`
    gets half its bytes onto the disk, which is then full: every later os.write there raises ENOSPC.
    `arm(None)` lifts it. (Every output write goes through os.write.)"""
    real_write = os.write
    state: dict[str, Any] = {}

    def write(fd, data):
        if not state:
            return real_write(fd, data)
        path = os.readlink(f"/proc/self/fd/{fd}")
        if not path.startswith(str(state["folder"])):
            return real_write(fd, data)
        if state["full"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if state["matches"](os.path.basename(path)):
            state["seen"] += 1
            if state["seen"] == state["nth"]:
                state["full"] = True
                return real_write(fd, bytes(data[: len(data) // 2]))
        return real_write(fd, data)

    def arm(folder, matches=None, nth=0):
        state.clear()
        if folder is not None:
            state.update(folder=folder, matches=matches, nth=nth, seen=0, full=False)

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd to tell which file a write goes to")
    monkeypatch.setattr(os, "write", write)
    return arm


@pytest.mark.parametrize("target, nth, logged, saved", [
    ("metrics.csv", 6, 4, 4),  # the header, then round 5's line half-written: round 5 leaves every log
    (CHECKPOINT, 2, 4, 2),  # round 4's checkpoint half-written: the one of round 2 stays
])
def test_a_full_disk_mid_run_leaves_whole_files_and_resume_finishes_it_exactly(
        tmp_path, tiny_cfg_dict, full_disk, target, nth, logged, saved):
    raw = with_(tiny_cfg_dict, rounds=6, checkpoint={"every": 2})
    f = cfg_file(tmp_path, raw)
    out = tmp_path / "run"
    # appends write to the file itself; whole files go to a temporary beside it
    full_disk(out, lambda name: name == target or name.startswith(f".{target}."), nth)
    res = cli.invoke(app, ["run", str(f)])
    error_line(res, 1, f"writing {out / target} failed: No space left on device", f"holds round {saved}",
               f"continue with: fedbrb-fast run --resume {out}")
    full_disk(None)

    assert len(assert_whole_logs(out)) == logged
    assert load_checkpoint(out / CHECKPOINT)[1]["round"] == saved
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")] and not (out / "summary.json").exists()
    res = cli.invoke(app, ["run", "--resume", str(out)])
    assert res.exit_code == 0, res.output
    ref = run_experiment(config_from_dict(with_(raw, output_dir=str(tmp_path / "ref"))))
    assert comparable(assert_whole_logs(out)) == comparable(ref.rows)
    assert same_model(out, tmp_path / "ref")


# --- real file systems: a read-only mount and a full tmpfs (root in a private mount namespace) ---------

def _can_mount():
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    with tempfile.TemporaryDirectory() as d:
        probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                                f"mount -t tmpfs -o size=64k tmpfs {d}"], capture_output=True)
    return probe.returncode == 0


# Mounts real file systems and runs the CLI on them (about 13 s).
@pytest.mark.slow
@pytest.mark.skipif(not _can_mount(), reason="needs root and unshare to mount a tmpfs in a private namespace")
def test_real_read_only_and_full_file_systems(tmp_path, tiny_cfg_dict):
    """The mounts live in a private mount namespace and vanish with it. The tmpfs is sized (40 KiB)
    to fill up after the first checkpoint of this 6-round run (checkpoint every round)."""
    ro, disk = tmp_path / "ro", tmp_path / "disk"
    ro.mkdir()
    disk.mkdir()
    raw = with_(tiny_cfg_dict, rounds=6, checkpoint={"every": 1})
    f = cfg_file(tmp_path, raw)
    run = f"{sys.executable} -m fedbrb_fast.cli run"
    script = f"""
        mount --bind {ro} {ro} && mount -o remount,ro,bind {ro} {ro} || exit 90
        {run} {f} --set output_dir="'{ro}/run'" 2> {tmp_path}/ro.err; echo $? > {tmp_path}/ro.rc
        mount -t tmpfs -o size=40k tmpfs {disk} || exit 91
        {run} {f} --set output_dir="'{disk}/run'" 2> {tmp_path}/full.err; echo $? > {tmp_path}/full.rc
        cp -a {disk}/run {tmp_path}/after_full
        mount -o remount,size=4m {disk} || exit 92
        {run} --resume {disk}/run 2> {tmp_path}/resume.err; echo $? > {tmp_path}/resume.rc
        cp -a {disk}/run {tmp_path}/resumed
    """
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", script],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr

    def outcome(name):
        err = (tmp_path / f"{name}.err").read_text()
        assert "Traceback" not in err
        lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error:")]
        return int((tmp_path / f"{name}.rc").read_text()), lines

    rc, lines = outcome("ro")
    assert rc == 2 and len(lines) == 1 and f"cannot write in {str(ro)!r}: read-only file system" in lines[0]
    rc, lines = outcome("full")
    assert rc == 1 and len(lines) == 1, lines
    assert "No space left on device" in lines[0] and f"fedbrb-fast run --resume {disk / 'run'}" in lines[0]
    logged = assert_whole_logs(tmp_path / "after_full")
    saved = load_checkpoint(tmp_path / "after_full" / CHECKPOINT)[1]["round"]
    assert 1 <= saved <= len(logged) < 6, "the tmpfs should fill after the first checkpoint and before the end"
    rc, lines = outcome("resume")
    assert rc == 0 and not lines
    ref = run_experiment(config_from_dict(with_(raw, output_dir=str(tmp_path / "ref"))))
    assert comparable(assert_whole_logs(tmp_path / "resumed")) == comparable(ref.rows)
    assert same_model(tmp_path / "resumed", tmp_path / "ref")
