"""Run a suite: each data set is built once and shared by every arm that trains on it; runs that
compute the same thing run once; finished runs are skipped, interrupted ones resume from their
checkpoint; then summary.json and plots."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..checkpoint import CheckpointError
from ..config import ExperimentConfig, config_to_toml
from ..data import FederatedData
from ..engines import build_federated_data
from ..outputs import atomic_write_text, read_metrics
from ..outputs.pyplot import pyplot
from ..runner import CHECKPOINT, run_experiment
from .plots import PLOTS
from .suite import RunSpec, Suite, data_key, expand_runs, result_key
from .summary import build_summary, write_suite_plots


@dataclass(frozen=True)
class RunOutcome:
    spec: RunSpec
    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    reused: bool  # finished by an earlier invocation
    shared_with: RunSpec | None = None  # the run with the same result_key whose result this is


def run_suite(suite: Suite, out_root: str | Path, *, quick: bool = False, command: str,
              show_progress: bool = True) -> dict[str, Any]:
    """Validate every run first (SuiteError before any work), run what is not finished yet, and
    write `<out_root>/<suite>/summary.json` and its plots. Returns the suite summary."""
    runs = expand_runs(suite, out_root, quick=quick)
    pyplot(PLOTS)  # the figures' extra is there before any work
    suite_dir = Path(out_root) / suite.name
    start = time.perf_counter()
    outcomes: list[RunOutcome] = []
    by_key: dict[str, RunOutcome] = {}
    data = DataCache()
    with tqdm(total=sum(r.config.rounds for r in runs), desc=suite.name, unit="round",
              disable=not show_progress) as bar:
        for spec in _seed_major(runs):
            bar.set_description(f"{suite.name} {spec.scenario}/{spec.arm}/seed{spec.seed}")
            key = result_key(spec.config)
            if key in by_key:
                outcomes.append(_share(spec, by_key[key], bar))
            else:
                by_key[key] = _run_one(spec, lambda s=spec: data.get(s.config), bar)
                outcomes.append(by_key[key])
    wall = time.perf_counter() - start
    summary = build_summary(suite, outcomes, quick=quick, command=command, wall_seconds=wall)
    atomic_write_text(suite_dir / "summary.json", json.dumps(summary, indent=2) + "\n")  # keeps the arms' order
    write_suite_plots(summary, suite_dir)
    return summary


def _seed_major(runs: list[RunSpec]) -> list[RunSpec]:
    """All of seed 0 first (a partial suite already has every scenario), then seed 1, ...; within a
    seed the suite's order stays, so neighbouring scenarios on the same data share one copy."""
    seeds = list(dict.fromkeys(r.seed for r in runs))
    return sorted(runs, key=lambda r: seeds.index(r.seed))  # stable: scenario and arm order kept


class DataCache:
    """The federated data of the latest data_key, built on first use: consecutive runs on the same
    data (every arm of a scenario, scenarios that differ only in widths) share one copy, and a
    stretch of finished runs never loads any."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._data: FederatedData | None = None

    def get(self, cfg: ExperimentConfig) -> FederatedData:
        if self._key != data_key(cfg):
            self._key, self._data = data_key(cfg), build_federated_data(cfg)
        return self._data


def _run_one(spec: RunSpec, data: Callable[[], FederatedData], bar: tqdm) -> RunOutcome:
    run_dir = Path(spec.config.output_dir)
    same_config = _saved_config(run_dir) == config_to_toml(spec.config)
    if same_config and (run_dir / "summary.json").is_file():
        bar.update(spec.config.rounds)
        summary = json.loads((run_dir / "summary.json").read_text())
        return RunOutcome(spec, summary, read_metrics(run_dir / "metrics.jsonl"), reused=True)
    if same_config and (run_dir / CHECKPOINT).is_file():
        before = bar.n
        try:
            result = run_experiment(spec.config, data=data(), out_dir=run_dir, progress=bar, resume=True)
            bar.update(spec.config.rounds - (bar.n - before))  # the rounds done before the interruption
            return RunOutcome(spec, result.summary, result.rows, reused=False)
        except CheckpointError as exc:
            tqdm.write(f"{run_dir}: cannot resume ({exc}); running it again from the start")
    # A summary.json left by a different config must not pass for this run's result.
    (run_dir / "summary.json").unlink(missing_ok=True)
    result = run_experiment(spec.config, data=data(), out_dir=run_dir, progress=bar)
    return RunOutcome(spec, result.summary, result.rows, reused=False)


def _share(spec: RunSpec, original: RunOutcome, bar: tqdm) -> RunOutcome:
    """A run that computes exactly what `original` computed: its folder points there."""
    run_dir = Path(spec.config.output_dir)
    note = {"same_as": os.path.relpath(original.spec.config.output_dir, run_dir),
            "why": "identical result_key: this method ignores what differs between the two configs"}
    atomic_write_text(run_dir / "same_as.json", json.dumps(note, indent=2) + "\n")
    bar.update(spec.config.rounds)
    return RunOutcome(spec, original.summary, original.rows, reused=original.reused, shared_with=original.spec)


def _saved_config(run_dir: Path) -> str | None:
    path = run_dir / "config.toml"
    return path.read_text() if path.is_file() else None
