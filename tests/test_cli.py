import json

import pytest
import tomli_w
from typer.testing import CliRunner

from fedbrb_fast.cli import app
from fedbrb_fast.outputs import read_metrics

runner = CliRunner()


def write_cfg(tmp_path, raw):
    f = tmp_path / "cfg.toml"
    f.write_text(tomli_w.dumps(raw))
    return f


@pytest.mark.slow  # about 1.6 s
def test_run_writes_config_metrics_and_summary(tmp_path, tiny_cfg_dict):
    f = write_cfg(tmp_path, tiny_cfg_dict)
    res = runner.invoke(app, ["run", str(f), "--set", "rounds=3", "--set", "method.name=heterofl"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "run"
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == [1, 2, 3] and all(r["method"] == "heterofl" for r in rows)
    assert len((out / "metrics.csv").read_text().splitlines()) == 4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_accuracy"] == rows[-1]["accuracy"]
    assert "rounds = 3" in (out / "config.toml").read_text() and "final accuracy" in res.output


@pytest.mark.slow  # over 1 s: runs in make test, not make test-fast
def test_compare_writes_table_plot_and_runs(tmp_path, tiny_cfg_dict):
    f = write_cfg(tmp_path, tiny_cfg_dict)
    res = runner.invoke(app, ["compare", str(f), "--methods", "fedbrb,heterofl,fedavg_small"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "run"
    table = (out / "comparison.md").read_text()
    for m in ("fedbrb", "heterofl", "fedavg_small"):
        assert f"| {m} |" in table and f"| {m} |" in res.output
        assert (out / m / "metrics.jsonl").exists()
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert set(json.loads((out / "comparison.json").read_text())) == {"fedbrb", "heterofl", "fedavg_small"}


@pytest.mark.slow  # every method
def test_same_scenario_for_every_method(tmp_path, tiny_cfg_dict):
    f = write_cfg(tmp_path, tiny_cfg_dict)
    assert runner.invoke(app, ["compare", str(f), "--methods", "heterofl"]).exit_code == 0
    first = read_metrics(tmp_path / "run" / "heterofl" / "metrics.jsonl")
    assert runner.invoke(app, ["compare", str(f), "--methods", "fedbrb,heterofl", "--overwrite"]).exit_code == 0
    again = read_metrics(tmp_path / "run" / "heterofl" / "metrics.jsonl")
    assert [r["accuracy"] for r in first] == [r["accuracy"] for r in again]


def test_invalid_config_fails_before_any_work(tmp_path, tiny_cfg_dict):
    f = write_cfg(tmp_path, tiny_cfg_dict)
    res = runner.invoke(app, ["run", str(f), "--set", "clients.per_round=99"])
    assert res.exit_code == 2 and "clients.per_round" in res.output
    assert not (tmp_path / "run").exists()
    res = runner.invoke(app, ["compare", str(f), "--methods", "fedbrb,fedprox"])
    assert res.exit_code == 2 and "fedprox" in res.output and not (tmp_path / "run").exists()
    res = runner.invoke(app, ["run", str(tmp_path / "nope.toml")])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_show_config_prints_resolved_toml():
    res = runner.invoke(app, ["show-config", "--set", "train.lr=0.125"])
    assert res.exit_code == 0 and "lr = 0.125" in res.output and "[method]" in res.output
