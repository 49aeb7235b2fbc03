"""Run a suite: each data set is built once and shared by every arm that trains on it; runs that
compute the same thing run once; finished runs of the same config are skipped, interrupted ones
resume from their checkpoint, and a folder holding a run of another config is refused (before any
work) unless the caller asks to overwrite; then summary.json and plots."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..config import ExperimentConfig, config_to_toml
from ..data import FederatedData
from ..outputs import OutputDirError, OutputWriteError, atomic_write_text, check_writable, clear_results, held_run
from ..outputs.pyplot import pyplot
from ..runner import RunWriteFailed, load_data, run_or_continue
from .plots import PLOTS
from .suite import RunOutcome, RunSpec, Suite, data_key, expand_runs, result_key
from .summary import build_summary, write_suite_plots


def run_suite(suite: Suite, out_root: str | Path, *, quick: bool = False, command: str,
              show_progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Validate every run first (SuiteError before any work) and check the run folders (a run of
    another config: OutputDirError unless `overwrite`), run what is not finished yet, and write
    `<out_root>/<suite>/summary.json` and its plots. Returns the suite summary."""
    runs = expand_runs(suite, out_root, quick=quick)
    pyplot(PLOTS)  # the figures' extra is there before any work
    suite_dir = Path(out_root) / suite.name
    if not overwrite:
        _refuse_other_configs(runs, suite_dir)
    check_writable(suite_dir)
    start = time.perf_counter()
    outcomes: list[RunOutcome] = []
    by_key: dict[str, RunOutcome] = {}
    data = DataCache()
    with tqdm(total=sum(r.config.rounds for r in runs), desc=suite.name, unit="round",
              disable=not show_progress) as bar:
        for spec in _seed_major(runs):
            bar.set_description(f"{suite.name} {spec.scenario}/{spec.arm}/seed{spec.seed}")
            key = result_key(spec.config)
            try:
                if key in by_key:
                    outcomes.append(_share(spec, by_key[key], bar, overwrite))
                else:
                    by_key[key] = _run_one(spec, partial(data.get, spec.config), bar, overwrite)
                    outcomes.append(by_key[key])
            except RunWriteFailed as exc:
                raise exc.continue_with(f"once the cause is fixed, run `{command}` again to continue the suite") \
                    from exc
    wall = time.perf_counter() - start
    summary = build_summary(suite, outcomes, quick=quick, command=command, wall_seconds=wall)
    try:
        atomic_write_text(suite_dir / "summary.json", json.dumps(summary, indent=2) + "\n")  # keeps the arms' order
        write_suite_plots(summary, suite_dir)
    except OutputWriteError as exc:
        raise RunWriteFailed(f"writing {exc.filename} failed: {exc.strerror}",
                             f"every run is complete; once the cause is fixed, `{command}` writes the summary") from exc
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
        if self._data is None or self._key != data_key(cfg):
            self._key, self._data = data_key(cfg), load_data(cfg)
        return self._data


def _run_one(spec: RunSpec, data: Callable[[], FederatedData], bar: tqdm, overwrite: bool) -> RunOutcome:
    result, reused = run_or_continue(spec.config, data=data, out_dir=Path(spec.config.output_dir), progress=bar,
                                     overwrite=overwrite)
    return RunOutcome(spec, result.summary, result.rows, reused=reused)


def _refuse_other_configs(runs: list[RunSpec], suite_dir: Path) -> None:
    """A run folder holding a run of another config (the suite file changed since) is refused
    before anything runs: its results are not this suite's, and replacing them needs consent."""
    others = [held for spec in runs if (held := held_run(Path(spec.config.output_dir))) is not None
              and held.config_text != config_to_toml(spec.config)]
    if others:
        raise OutputDirError(
            f"{len(others)} run folder(s) under {str(suite_dir)!r} hold runs of another config than this suite asks "
            f"for (the suite changed since they ran), e.g. {str(others[0].path)!r}: {others[0].describe()}; nothing "
            "was run. Add --overwrite to replace them, or give another --out")


def _share(spec: RunSpec, original: RunOutcome, bar: tqdm, overwrite: bool) -> RunOutcome:
    """A run that computes exactly what `original` computed: its folder points there."""
    run_dir = Path(spec.config.output_dir)
    if overwrite:
        clear_results(run_dir)
    note = {"same_as": os.path.relpath(original.spec.config.output_dir, run_dir),
            "why": "identical result_key: this method ignores what differs between the two configs"}
    atomic_write_text(run_dir / "same_as.json", json.dumps(note, indent=2) + "\n")
    bar.update(spec.config.rounds)
    return RunOutcome(spec, original.summary, original.rows, reused=original.reused, shared_with=original.spec)
