"""Run one experiment or compare methods on one scenario, writing outputs as it goes."""

from __future__ import annotations

import hashlib
import json
import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import save as st_save
from tqdm.auto import tqdm

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import METHODS, ConfigError, ExperimentConfig, config_from_dict, config_to_toml, load_config
from .data import FederatedData
from .engines import Simulation, build_federated_data, is_main_process
from .outputs import RunWriter, atomic_write_bytes, atomic_write_text, comparison_table, plot_accuracy, summarize
from .outputs.pyplot import pyplot
from .outputs.report import PLOT

CHECKPOINT = "checkpoint.safetensors"
MODEL = "model.safetensors"


class RunInterrupted(RuntimeError):
    """SIGINT/SIGTERM arrived; the run stopped after a checkpoint and can be resumed."""


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
                   progress: tqdm | None = None, resume: bool = False) -> RunResult:
    """All rounds of one configuration; metrics are appended after every round, a checkpoint is
    written every `checkpoint.every` rounds, on SIGINT/SIGTERM and at the end. With `resume`,
    the run continues from the checkpoint in `out_dir` exactly as if it had never stopped.
    Under the distributed engine every rank runs this; rank 0 alone writes and shows progress."""
    sim = Simulation(cfg, data)
    main = is_main_process()
    writer = RunWriter(out_dir if out_dir is not None else cfg.output_dir)
    rows, events = _resume_state(sim, writer, cfg, rewrite_logs=main) if resume else ([], [])
    if main and not resume:
        writer.start(cfg)
    bar = progress if progress is not None else tqdm(total=cfg.rounds, initial=sim.round_idx, desc=cfg.method.name,
                                                     unit="round", disable=not main)
    last_acc = next((r["accuracy"] for r in reversed(rows) if r["accuracy"] is not None), None)
    try:
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
                if stopping and not sim.finished:
                    raise RunInterrupted(f"interrupted after round {sim.round_idx}; checkpoint written to "
                                         f"{writer.dir / CHECKPOINT}; continue with: fedbrb-fast run --resume {writer.dir}")
    finally:
        if progress is None:
            bar.close()
    summary = summarize(rows)
    if main:
        atomic_write_bytes(writer.dir / MODEL, st_save({k: v.contiguous() for k, v in sim.params.items()}))
        writer.finish(summary)
    return RunResult(writer.dir, rows, summary)


def _checkpoint(writer: RunWriter, sim: Simulation, cfg: ExperimentConfig, rows: list, events: list) -> None:
    save_checkpoint(writer.dir / CHECKPOINT, sim.params,
                    {"round": sim.round_idx, "config_sha256": config_digest(cfg), "rows": rows, "events": events})


def _resume_state(sim: Simulation, writer: RunWriter, cfg: ExperimentConfig, *,
                  rewrite_logs: bool) -> tuple[list, list]:
    params, state = load_checkpoint(writer.dir / CHECKPOINT)
    if state.get("config_sha256") != config_digest(cfg):
        raise CheckpointError(f"the checkpoint in {str(writer.dir)!r} belongs to a different config")
    try:
        sim.restore(params, int(state["round"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint in {str(writer.dir)!r} does not fit this run: {exc}") from None
    rows, events = list(state.get("rows", [])), list(state.get("events", []))
    if rewrite_logs:
        writer.restore(rows, events)
    return rows, events


def resume_experiment(run_dir: str | Path) -> RunResult:
    """Continue the run in `run_dir` from its config.toml and checkpoint."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.toml")
    return run_experiment(cfg, out_dir=run_dir, resume=True)


def method_config(cfg: ExperimentConfig, method: str) -> ExperimentConfig:
    raw = cfg.model_dump()
    raw["method"]["name"] = method
    return config_from_dict(raw)


def compare_methods(cfg: ExperimentConfig, methods: Sequence[str]) -> dict[str, Any]:
    """Every method on the same data, partition, seed and budget; writes per-method runs plus
    comparison.md, comparison.json and accuracy.png under cfg.output_dir."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ConfigError(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}")
    configs = {m: method_config(cfg, m) for m in methods}  # all validated before any work
    pyplot(PLOT)  # and the plot's extra is there
    root = Path(cfg.output_dir)
    data = build_federated_data(cfg)
    results = {}
    with tqdm(total=cfg.rounds * len(methods), desc="compare", unit="round", disable=not is_main_process()) as bar:
        for m, mcfg in configs.items():
            results[m] = run_experiment(mcfg, data=data, out_dir=root / m, progress=bar)
    summaries = {m: r.summary for m, r in results.items()}
    table = comparison_table(summaries)
    if is_main_process():
        atomic_write_text(root / "comparison.md", f"# {cfg.name}\n\n{table}")
        atomic_write_text(root / "comparison.json", json.dumps(summaries, indent=2, sort_keys=True) + "\n")
        plot_accuracy({m: r.rows for m, r in results.items()}, root / "accuracy.png", title=cfg.name)
    return {"table": table, "summaries": summaries, "out_dir": root}
