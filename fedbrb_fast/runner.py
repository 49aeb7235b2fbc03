"""Run one experiment or compare methods on one scenario, writing outputs as it goes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .config import METHODS, ConfigError, ExperimentConfig, config_from_dict
from .data import FederatedData
from .engines import Simulation, build_federated_data
from .outputs import RunWriter, atomic_write_text, comparison_table, plot_accuracy, summarize


@dataclass(frozen=True)
class RunResult:
    out_dir: Path
    rows: list[dict[str, Any]]
    summary: dict[str, Any]


def run_experiment(cfg: ExperimentConfig, *, data: FederatedData | None = None, out_dir: str | Path | None = None,
                   progress: tqdm | None = None) -> RunResult:
    """All rounds of one configuration; metrics are appended after every round."""
    sim = Simulation(cfg, data)
    writer = RunWriter(out_dir if out_dir is not None else cfg.output_dir)
    writer.start(cfg)
    bar = progress if progress is not None else tqdm(total=cfg.rounds, desc=cfg.method.name, unit="round")
    rows: list[dict[str, Any]] = []
    last_acc = None
    try:
        while not sim.finished:
            row = sim.run_round().flat()
            writer.append(row)
            rows.append(row)
            last_acc = row["accuracy"] if row["accuracy"] is not None else last_acc
            bar.update(1)
            bar.set_postfix(method=cfg.method.name, round=row["round"], clients=row["clients"],
                            acc="—" if last_acc is None else f"{100 * last_acc:.1f}%")
    finally:
        if progress is None:
            bar.close()
    summary = summarize(rows)
    writer.finish(summary)
    return RunResult(writer.dir, rows, summary)


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
    root = Path(cfg.output_dir)
    data = build_federated_data(cfg)
    results = {}
    with tqdm(total=cfg.rounds * len(methods), desc="compare", unit="round") as bar:
        for m, mcfg in configs.items():
            results[m] = run_experiment(mcfg, data=data, out_dir=root / m, progress=bar)
    summaries = {m: r.summary for m, r in results.items()}
    table = comparison_table(summaries)
    atomic_write_text(root / "comparison.md", f"# {cfg.name}\n\n{table}")
    atomic_write_text(root / "comparison.json", json.dumps(summaries, indent=2, sort_keys=True) + "\n")
    plot_accuracy({m: r.rows for m, r in results.items()}, root / "accuracy.png", title=cfg.name)
    return {"table": table, "summaries": summaries, "out_dir": root}
