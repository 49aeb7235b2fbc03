"""The GPU check (bench/gpu) stays ready for a GPU: its dry run passes on the CPU, and its driver
isolates checks (a failing, crashing or hanging check fails alone; the run goes on)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench" / "gpu"))

import driver  # noqa: E402
from harness import Skip  # noqa: E402


# Every check of the GPU run on the CPU (about 25 s).
@pytest.mark.slow
def test_dry_run_runs_every_check_on_the_cpu(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, FEDBRB_GPU_CHECK_SCRATCH=str(tmp_path / "scratch"))
    run = subprocess.run(["bash", "bench/gpu/run.sh", "--dry-run", "--out", str(out), "--budget-s", "900"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert list(report["checks"]) == [c.name for c in driver.CHECKS] == report["expected_checks"]
    for name, check in report["checks"].items():
        assert check["status"] in ("ok", "skipped"), (name, check["error"])
        assert all(part["reason"] for part in check["skipped_parts"]), name
    assert report["failed"] == [] and report["meta"]["mode"] == "dry-run"
    checks = report["checks"]
    assert checks["environment"]["metrics"]["triton_kernels_interpreted"] is True
    for name in ("grouped_gemm", "aggregation_kernels", "aggregation_rule", "engine_cuda"):
        assert checks[name]["cases"] and all(c["ok"] for c in checks[name]["cases"]), name
    # training runs inside aggregation's stream, so its range may be nested ("fedbrb:aggregate > fedbrb:train")
    ranges = checks["nvtx_round"]["metrics"].get("ranges", {})
    assert any(r.split(" > ")[-1] == "fedbrb:train" for r in ranges) or checks["nvtx_round"]["status"] == "skipped"
    preresnet = checks["speed_preresnet"]["metrics"]["rows"]  # the engine benchmark's PreResNet row ran
    assert preresnet and all(r["batched_vs_plain"] > 0 and r["vmapped_vs_plain"] > 0 for r in preresnet)
    log = (out / "gpu_check.log").read_text()
    assert log.rstrip().endswith("no check failed")  # the table comes last
    assert "== engine_cuda" in log and "relative error" in log


def check_fine(ctx, rec):
    rec.case("exact", 0.0, 1e-6)


def check_raises(ctx, rec):
    rec.case("first case passes", 0.0, 1e-6)
    raise ValueError("boom")


def check_wrong(ctx, rec):
    rec.case("too far off", 1e-2, 1e-6)


def check_crashes(ctx, rec):
    os._exit(3)


def check_hangs(ctx, rec):
    time.sleep(60)


def check_skips(ctx, rec):
    raise Skip("nothing to do here")


@pytest.fixture
def test_checks(monkeypatch):
    specs = tuple(driver.CheckSpec(name, "test", f"{__name__}:check_{name}", 1.0, name)
                  for name in ("fine", "raises", "wrong", "crashes", "hangs", "skips"))
    monkeypatch.setattr(driver, "CHECKS", specs)
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # main() sets it for a dry run; restored afterwards
    monkeypatch.setattr(driver, "GRACE_S", 0.5)
    monkeypatch.setattr(driver, "RESERVED_FOR_LAST_S", 0)
    return specs


@pytest.mark.slow  # over 1 s: runs in make test, not make test-fast
def test_each_check_fails_alone_and_the_run_goes_on(tmp_path, test_checks, capsys):
    status = driver.main(["--dry-run", "--out", str(tmp_path / "out"), "--work-dir", str(tmp_path / "work"),
                          "--budget-s", "60"])
    assert status == 1
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    checks = report["checks"]
    assert list(checks) == [s.name for s in test_checks]
    assert checks["fine"]["status"] == "ok" and checks["skips"]["status"] == "skipped"
    assert checks["skips"]["error"] == "nothing to do here"
    assert checks["raises"]["status"] == "failed" and "ValueError: boom" in checks["raises"]["error"]
    assert checks["raises"]["cases"][0]["ok"]  # what it recorded before failing is kept
    assert checks["wrong"]["status"] == "failed" and "relative error 1.00e-02" in checks["wrong"]["error"]
    assert checks["crashes"]["status"] == "failed" and "exit code 3" in checks["crashes"]["error"]
    assert checks["hangs"]["status"] == "failed" and "killed after" in checks["hangs"]["error"]
    assert report["failed"] == ["raises", "wrong", "crashes", "hangs"]
    printed = capsys.readouterr().out
    assert printed.rstrip().endswith("failed: raises, wrong, crashes, hangs")


def test_unknown_check_names_are_refused(tmp_path, test_checks):
    assert driver.main(["--dry-run", "--out", str(tmp_path), "--only", "fine,nope"]) == 2
