import errno
import json
import os

import pytest

from fedbrb_fast.config import ExperimentConfig
from fedbrb_fast.outputs import (
    METRIC_COLUMNS,
    OutputWriteError,
    RunWriter,
    append_line,
    append_lines_together,
    atomic_write_text,
    comparison_table,
    plot_accuracy,
    read_metrics,
    summarize,
)


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    f = tmp_path / "a" / "x.json"
    atomic_write_text(f, "old")
    atomic_write_text(f, "new")
    assert f.read_text() == "new" and sorted(p.name for p in f.parent.iterdir()) == ["x.json"]


def test_failed_atomic_write_keeps_old_content(tmp_path, monkeypatch):
    f = tmp_path / "x.txt"
    atomic_write_text(f, "old")

    def boom(*_):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OutputWriteError, match="disk full.*x.txt"):
        atomic_write_text(f, "new")
    assert f.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_append_line_writes_complete_lines(tmp_path):
    f = tmp_path / "m.jsonl"
    append_line(f, '{"a": 1}')
    append_line(f, '{"a": 2}\n')
    assert f.read_text() == '{"a": 1}\n{"a": 2}\n'


def half_then_full(monkeypatch, target):
    """os.write to `target` stores half the bytes, then the disk is full (ENOSPC)."""
    real_write, calls = os.write, []

    def write(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}") != str(target):
            return real_write(fd, data)
        calls.append(len(data))
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, bytes(data[: len(data) // 2]))

    monkeypatch.setattr(os, "write", write)
    return calls


def test_an_append_cut_short_by_a_full_disk_leaves_no_partial_line(tmp_path, monkeypatch):
    f = tmp_path / "m.jsonl"
    append_line(f, '{"a": 1}')
    calls = half_then_full(monkeypatch, f)
    with pytest.raises(OutputWriteError) as err:
        append_line(f, '{"a": 2, "padding": "xxxxxxxxxxxxxxxx"}')
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(f) and len(calls) == 2
    assert f.read_text() == '{"a": 1}\n'


def test_appending_to_several_logs_is_all_or_nothing(tmp_path, monkeypatch):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.csv"
    append_lines_together([(a, "1"), (b, "1")])
    half_then_full(monkeypatch, b)
    with pytest.raises(OutputWriteError, match="b.csv"):
        append_lines_together([(a, "2"), (a, "2 again"), (b, "2")])
    assert a.read_text() == "1\n" and b.read_text() == "1\n"


def test_run_writer_files(tmp_path):
    w = RunWriter(tmp_path / "run")
    w.start(ExperimentConfig())
    rows = [{"round": 1, "method": "fedbrb", "accuracy": None, "loss": None, "train_loss": 1.5, "lr": 0.1, "lam": 0.5,
             "clients": 3, "excluded": 0, "sec_train": 0.2, "sec_total": 0.3},
            {"round": 2, "method": "fedbrb", "accuracy": 0.5, "loss": float("nan"), "train_loss": 1.0, "lr": 0.1,
             "lam": 0.5, "clients": 3, "excluded": 1, "sec_train": 0.25, "sec_total": 0.4}]
    for r in rows:
        w.append(r)
    back = read_metrics(w.metrics_jsonl)
    assert back[0]["accuracy"] is None and back[1]["loss"] is None and back[1]["accuracy"] == 0.5
    csv_lines = w.metrics_csv.read_text().splitlines()
    assert csv_lines[0] == ",".join(METRIC_COLUMNS) and len(csv_lines) == 3
    assert csv_lines[2].split(",")[METRIC_COLUMNS.index("accuracy")] == "0.5"
    s = summarize(back)
    assert s["final_accuracy"] == 0.5 and s["excluded_updates"] == 1 and s["seconds"]["train"] == pytest.approx(0.45)
    w.finish(s)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["rounds"] == 2
    assert "[clients]" in (tmp_path / "run" / "config.toml").read_text()


def test_comparison_table_and_plot(tmp_path):
    sums = {"a": {"final_accuracy": 0.5, "best_accuracy": 0.6, "final_loss": 1.0, "rounds": 2,
                  "seconds": {"total": 3.0}},
            "b": {"final_accuracy": 0.7, "best_accuracy": 0.7, "final_loss": 0.9, "rounds": 2,
                  "seconds": {"total": 2.0}}}
    table = comparison_table(sums).splitlines()
    assert table[2].startswith("| b | 70.00 |") and table[3].startswith("| a | 50.00 | 60.00 |")
    png = tmp_path / "acc.png"
    plot_accuracy({"a": [{"round": 1, "accuracy": 0.3}, {"round": 2, "accuracy": 0.5}]}, png, "t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    target = tmp_path / "summary.json"
    atomic_write_text(target, "{}")
    append_line(tmp_path / "metrics.jsonl", "{}")
    umask = os.umask(0)
    os.umask(umask)
    assert (target.stat().st_mode & 0o777) == 0o666 & ~umask
    assert (target.stat().st_mode & 0o777) == ((tmp_path / "metrics.jsonl").stat().st_mode & 0o777)
