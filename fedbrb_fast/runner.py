"""Run one experiment or compare methods on one scenario, writing outputs as it goes."""

from __future__ import annotations

import errno
import hashlib
import json
import shlex
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import save as st_save
from torch import Tensor
from tqdm.auto import tqdm

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import ConfigError, ExperimentConfig, config_from_dict, config_to_toml, load_config
from .data import FederatedData, dataset_vocabulary
from .engines import Simulation, build_federated_data, is_main_process
from .methods import METHODS
from .outputs import (
    CHECKPOINT,
    MODEL,
    SUMMARY,
    VOCABULARY,
    OutputDirError,
    OutputWriteError,
    RunWriter,
    atomic_write_bytes,
    atomic_write_text,
    check_writable,
    clear_results,
    comparison_table,
    held_run,
    plot_accuracy,
    read_metrics,
    read_vocabulary,
    summarize,
    survey,
)
from .outputs.pyplot import pyplot
from .outputs.report import PLOT


class RunInterrupted(RuntimeError):
    """SIGINT/SIGTERM arrived; the run stopped after a checkpoint and can be resumed."""


class DataError(ValueError):
    """The data the config names cannot be read (a missing or malformed file); nothing was written."""


class RunWriteFailed(RuntimeError):
    """Writing the outputs failed during a run (a full disk, an I/O error). The files left are
    complete (whole log lines, the last fully written checkpoint), so the run can continue."""

    def __init__(self, problem: str, how_to_continue: str) -> None:
        super().__init__(f"{problem}; {how_to_continue}")
        self.problem = problem

    def continue_with(self, how_to_continue: str) -> RunWriteFailed:
        """The same failure, with the way on that fits the command that ran it."""
        return RunWriteFailed(self.problem, how_to_continue)


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """SIGINT/SIGTERM set the returned event instead of killing the run mid-round."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def config_digest(cfg: ExperimentConfig) -> str:
    return hashlib.sha256(config_to_toml(cfg).encode()).hexdigest()


@dataclass(frozen=True)
class RunResult:
    out_dir: Path
    rows: list[dict[str, Any]]
    summary: dict[str, Any]


def run_experiment(cfg: ExperimentConfig, *, data: FederatedData | None = None, out_dir: str | Path | None = None,
                   progress: tqdm | None = None, resume: bool = False, overwrite: bool = False) -> RunResult:
    """All rounds of one configuration; metrics are appended after every round, a checkpoint is
    written every `checkpoint.every` rounds, on SIGINT/SIGTERM and at the end. With `resume`,
    the run continues from the checkpoint in `out_dir` exactly as if it had never stopped.

    Before any work (data loading included): a folder that already holds results is refused
    (OutputDirError) unless `overwrite`, which removes the earlier run's files once the data is
    loaded; a folder that cannot be written is refused; a resumed checkpoint is read and checked,
    and so is the vocabulary the run saved (token data) against this run's.
    A write error during the run raises RunWriteFailed: the logs end in whole lines and the last
    checkpoint is complete, so the run can be resumed. Under the distributed engine every rank
    runs this; rank 0 alone checks the folder, writes and shows progress."""
    out = Path(out_dir if out_dir is not None else cfg.output_dir)
    main = is_main_process()
    checkpoint = _read_checkpoint(out, cfg) if resume else None
    if resume:
        _check_vocabulary(out, data.vocabulary if data is not None else dataset_vocabulary(cfg.data.dataset))
    if main:
        if not resume and not overwrite:
            _refuse_earlier_results(out)
        check_writable(out)
    sim = Simulation(cfg, data if data is not None else load_data(cfg))
    rows, events = _restore(sim, out, *checkpoint) if checkpoint is not None else ([], [])
    writer = RunWriter(out)
    saved = sim.round_idx if resume else None  # round of the last complete checkpoint
    bar = progress if progress is not None else tqdm(total=cfg.rounds, initial=sim.round_idx, desc=cfg.method.name,
                                                     unit="round", disable=not main)
    last_acc = next((r["accuracy"] for r in reversed(rows) if r["accuracy"] is not None), None)
    try:
        if main and resume:
            writer.restore(rows, events)  # drops whatever a crash appended after the checkpoint
        elif main:
            if overwrite:
                clear_results(out)
            writer.start(cfg, sim.data.vocabulary)
        with stop_on_signals() as stop:
            while not sim.finished:
                record = sim.run_round()
                row, new_events = record.flat(), [e.as_dict() for e in record.events]
                rows.append(row)
                events += new_events
                if main:
                    writer.append(row, new_events)
                    if any(e["kind"] == "no_updates" for e in new_events):
                        tqdm.write(f"round {row['round']}: no client update reached aggregation; model unchanged")
                last_acc = row["accuracy"] if row["accuracy"] is not None else last_acc
                bar.update(1)
                bar.set_postfix(method=cfg.method.name, round=row["round"], clients=row["clients"],
                                acc="—" if last_acc is None else f"{100 * last_acc:.1f}%")
                stopping = sim.engine.any_rank(stop.is_set())  # every rank stops after the same round
                every = cfg.checkpoint.every
                if main and (stopping or sim.finished or (every and sim.round_idx % every == 0)):
                    _checkpoint(writer, sim, cfg, rows, events)
                    saved = sim.round_idx
                if stopping and not sim.finished:
                    raise RunInterrupted(f"interrupted after round {sim.round_idx}; checkpoint written to "
                                         f"{writer.dir / CHECKPOINT}; continue with: {_resume_command(out)}")
        summary = summarize(rows)
        if main:
            atomic_write_bytes(writer.dir / MODEL, st_save({k: v.contiguous() for k, v in sim.params.items()}))
            writer.finish(summary)
    except OutputWriteError as exc:
        raise _write_failure(exc, out, sim.round_idx, cfg.rounds, saved) from exc
    finally:
        if progress is None:
            bar.close()
    return RunResult(writer.dir, rows, summary)


def load_data(cfg: ExperimentConfig) -> FederatedData:
    """The federated data `cfg` names; DataError names the missing or malformed file or setting."""
    try:
        return build_federated_data(cfg)
    except (OSError, ValueError) as exc:
        raise DataError(f"data.dataset = {cfg.data.dataset!r}: {exc}") from None


def _refuse_earlier_results(out: Path) -> None:
    held = survey(out)
    if not held.empty:
        raise OutputDirError(f"output folder {str(out)!r} already holds {held.describe()}; nothing was changed. "
                             f"Continue an unfinished run with its saved config: {_resume_command(out)}; or "
                             "replace it: add --overwrite (or choose another output_dir)")


def _resume_command(out: Path) -> str:
    return f"fedbrb-fast run --resume {shlex.quote(str(out))}"


def _write_failure(exc: OutputWriteError, out: Path, round_idx: int, total: int, saved: int | None) -> RunWriteFailed:
    problem = f"writing {exc.filename} failed: {exc.strerror}"
    fixed = "there is free space again" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "the cause is fixed"
    if saved is None:
        return RunWriteFailed(problem, f"the run stopped at round {round_idx} of {total}, before its first "
                                       f"checkpoint; once {fixed}, start it again with --overwrite")
    return RunWriteFailed(problem, f"the run stopped at round {round_idx} of {total}; the logs end in complete lines "
                                   f"and {out / CHECKPOINT} holds round {saved}; once {fixed}, continue with: "
                                   f"{_resume_command(out)}")


def _checkpoint(writer: RunWriter, sim: Simulation, cfg: ExperimentConfig, rows: list, events: list) -> None:
    save_checkpoint(writer.dir / CHECKPOINT, sim.params,
                    {"round": sim.round_idx, "config_sha256": config_digest(cfg), "rows": rows, "events": events})


def _read_checkpoint(out: Path, cfg: ExperimentConfig) -> tuple[dict[str, Tensor], dict[str, Any]]:
    params, state = load_checkpoint(out / CHECKPOINT)
    if state.get("config_sha256") != config_digest(cfg):
        raise CheckpointError(f"the checkpoint in {str(out)!r} belongs to a different config")
    return params, state


def _check_vocabulary(out: Path, expected: str | None) -> None:
    """A resumed run reads its tokens with the vocabulary it was trained with (vocabulary.json), or
    with none, as it started."""
    try:
        saved = read_vocabulary(out)
    except ValueError as exc:
        raise CheckpointError(f"cannot resume the run in {str(out)!r}: {exc}") from None
    if saved != expected:
        record = f"its {VOCABULARY}" if saved is not None else f"no {VOCABULARY}"
        raise CheckpointError(f"the run in {str(out)!r} was trained with {_describe_vocabulary(saved)} ({record}), "
                              f"but this run's data has {_describe_vocabulary(expected)}; nothing was changed")


def _describe_vocabulary(vocabulary: str | None) -> str:
    return "no vocabulary" if vocabulary is None else f"the {len(vocabulary)}-entry vocabulary {vocabulary!r}"


def _restore(sim: Simulation, out: Path, params: dict[str, Tensor], state: dict[str, Any]) -> tuple[list, list]:
    try:
        sim.restore(params, int(state["round"]))
        return list(state.get("rows", [])), list(state.get("events", []))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint in {str(out)!r} does not fit this run: {exc}") from None


def resume_experiment(run_dir: str | Path) -> RunResult:
    """Continue the run in `run_dir` from its config.toml and checkpoint."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise OutputDirError(f"--resume {str(run_dir)!r}: " + ("is a file, not a run folder" if run_dir.exists()
                                                               else "no such folder"))
    if not (run_dir / "config.toml").is_file():
        raise OutputDirError(f"--resume {str(run_dir)!r}: no run to resume there (no config.toml)")
    if not (run_dir / CHECKPOINT).is_file():
        raise CheckpointError(f"--resume {str(run_dir)!r}: no checkpoint to continue from (the run stopped before "
                              "its first one, see checkpoint.every); start it again with --overwrite")
    return run_experiment(load_config(run_dir / "config.toml"), out_dir=run_dir, resume=True)


def run_or_continue(cfg: ExperimentConfig, *, data: Callable[[], FederatedData], out_dir: Path, progress: tqdm,
                    overwrite: bool = False) -> tuple[RunResult, bool]:
    """What a suite or a resumed comparison does with a run folder: reuse a finished run of the
    same config (without loading data), resume an unfinished one from its checkpoint, else run it
    from the start, replacing what a same-config run left without a usable checkpoint. A run of
    another config is refused (OutputDirError) unless `overwrite`. Returns (result, reused);
    `progress` advances by cfg.rounds either way."""
    before = progress.n
    held = held_run(out_dir)
    same = held is not None and held.config_text == config_to_toml(cfg)
    if held is not None and not same and not overwrite:
        raise OutputDirError(f"{str(out_dir)!r} holds {held.describe()} of another config; add --overwrite to "
                             "replace it")
    result, reused = None, False
    if held is not None and same and held.finished:
        summary = json.loads((out_dir / SUMMARY).read_text())
        result, reused = RunResult(out_dir, read_metrics(out_dir / "metrics.jsonl"), summary), True
    elif held is not None and same and held.has_checkpoint:
        try:
            result = run_experiment(cfg, data=data(), out_dir=out_dir, progress=progress, resume=True)
        except CheckpointError as exc:
            tqdm.write(f"{out_dir}: cannot resume ({exc}); running it again from the start")
    if result is None:
        result = run_experiment(cfg, data=data(), out_dir=out_dir, progress=progress, overwrite=True)
    progress.update(cfg.rounds - (progress.n - before))  # rounds done before an interruption, or reused
    return result, reused


def method_config(cfg: ExperimentConfig, method: str) -> ExperimentConfig:
    raw = cfg.model_dump()
    raw["method"]["name"] = method
    return config_from_dict(raw)


def compare_methods(cfg: ExperimentConfig, methods: Sequence[str], *, resume: bool = False,
                    overwrite: bool = False) -> dict[str, Any]:
    """Every method on the same data, partition, seed and budget; writes per-method runs plus
    comparison.md, comparison.json and accuracy.png under cfg.output_dir. A folder that already
    holds results is refused before any work unless `overwrite` (replace them all) or `resume`
    (same config and methods: finished runs are kept, unfinished ones continue, missing ones run)."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ConfigError(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}")
    if resume and overwrite:
        raise ConfigError("--resume keeps the comparison in output_dir and --overwrite replaces it: choose one")
    configs = {m: method_config(cfg, m) for m in methods}  # all validated before any work
    pyplot(PLOT)  # and the plot's extra is there
    root = Path(cfg.output_dir)
    main = is_main_process()
    if main:
        _check_comparison_folder(root, configs, resume=resume, overwrite=overwrite)
        check_writable(root)
    data = load_data(cfg)
    if overwrite and main:
        clear_results(root)
    results = {}
    with tqdm(total=cfg.rounds * len(methods), desc="compare", unit="round", disable=not main) as bar:
        try:
            for m, mcfg in configs.items():
                if resume:
                    results[m], _ = run_or_continue(mcfg, data=lambda: data, out_dir=root / m, progress=bar)
                else:
                    results[m] = run_experiment(mcfg, data=data, out_dir=root / m, progress=bar)
        except RunWriteFailed as exc:
            raise exc.continue_with("once the cause is fixed, continue the comparison: the same compare command "
                                    "with --resume") from exc
    summaries = {m: r.summary for m, r in results.items()}
    table = comparison_table(summaries)
    if main:
        try:
            atomic_write_text(root / "comparison.md", f"# {cfg.name}\n\n{table}")
            atomic_write_text(root / "comparison.json", json.dumps(summaries, indent=2, sort_keys=True) + "\n")
            plot_accuracy({m: r.rows for m, r in results.items()}, root / "accuracy.png", title=cfg.name)
        except OutputWriteError as exc:
            raise RunWriteFailed(f"writing {exc.filename} failed: {exc.strerror}",
                                 "every method's run is complete; once the cause is fixed, the same compare "
                                 "command with --resume writes the comparison") from exc
    return {"table": table, "summaries": summaries, "out_dir": root}


def _check_comparison_folder(root: Path, configs: dict[str, ExperimentConfig], *, resume: bool,
                             overwrite: bool) -> None:
    held = survey(root)
    if not resume:
        if not held.empty and not overwrite:
            raise OutputDirError(f"output folder {str(root)!r} already holds {held.describe()}; nothing was changed. "
                                 "Continue it: the same compare command with --resume; or replace it: add "
                                 "--overwrite (or choose another output_dir)")
        return
    if held.run is not None:
        raise OutputDirError(f"--resume: output folder {str(root)!r} holds {held.run.describe()}, not a comparison")
    for run in held.subruns:
        mcfg = configs.get(run.path.name)
        if mcfg is None or run.config_text != config_to_toml(mcfg):
            why = "a method not in --methods" if mcfg is None else "another config"
            raise OutputDirError(f"--resume: {str(run.path)!r} holds {run.describe()} of {why}; --resume continues "
                                 "a comparison with the same CONFIG, --set and --methods; add --overwrite instead "
                                 "to replace it")
