"""A suite's summary.json: what was run (setup, arms, commands, machine), the results per
scenario and arm as mean ± std over seeds, and the replayed tile coverage; plus its figures."""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..config import ExperimentConfig, NormedConfig
from ..methods import METHODS
from ..runner import load_data
from .coverage import IN_GROUP, OUT_GROUP, replay_coverage
from .diagnostics import DIAGNOSTICS, diagnose_run
from .formatting import format_widths
from .plots import plot_coverage, plot_scenario_curves
from .samples import continuation_samples
from .stats import arm_result, mean_std
from .suite import RunOutcome, Suite, data_key

SUMMARY_VERSION = 2  # bump when the report needs a field older summaries lack


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "cpu_model": _cpu_model(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "python": sys.version.split()[0]}


def _cpu_model() -> str:
    """The CPU's marketing name (Linux: /proc/cpuinfo), else what `platform` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def describe_setup(cfg: ExperimentConfig) -> dict[str, Any]:
    """The settings a reader needs to judge a scenario (the full configs are in the run folders)."""
    d, c, t = cfg.data, cfg.clients, cfg.train
    partition = {"dirichlet": f"dirichlet({d.dirichlet_alpha:g})", "shards": f"shards({d.shards_per_client})"}
    return {
        "dataset": d.dataset, "partition": d.partition, "partition_label": partition.get(d.partition, d.partition),
        "arch": cfg.model.arch, "hidden": cfg.model.group_sizes,
        "norm": cfg.model.norm if isinstance(cfg.model, NormedConfig) else "layernorm",
        "widths": list(c.widths), "proportions": c.proportions, "num_clients": c.num_clients,
        "per_round": c.per_round, "rounds": cfg.rounds, "local_epochs": t.local_epochs, "batch_size": t.batch_size,
        "lr": t.lr, "lr_schedule": t.lr_schedule, "momentum": t.momentum, "weight_decay": t.weight_decay,
        "engine": t.engine, "eval_every": cfg.eval.every, "lam": cfg.method.lam, "num_blocks": cfg.num_blocks,
    }


def build_summary(suite: Suite, outcomes: Sequence[RunOutcome], *, quick: bool, command: str,
                  wall_seconds: float) -> dict[str, Any]:
    scenarios = []
    diagnosed = diagnose_outcomes(outcomes) if suite.diagnose else {}
    for scenario in suite.scenarios:
        mine = [o for o in outcomes if o.spec.scenario == scenario.name]
        reference = next((o for o in mine if o.spec.arm in METHODS), mine[0])  # the scenario as methods see it
        results = {}
        for arm in suite.arms:
            runs = sorted((o for o in mine if o.spec.arm == arm.name), key=lambda o: o.spec.seed)
            if runs:
                results[arm.name] = arm_result([o.summary for o in runs], [o.rows for o in runs])
                shared = sorted({o.shared_with.scenario for o in runs if o.shared_with is not None})
                if shared:
                    results[arm.name]["shared_from"] = shared
                if suite.diagnose:
                    results[arm.name]["diagnostics"] = {
                        name: mean_std([diagnosed[o.spec.relative_dir][name] for o in runs]) for name in DIAGNOSTICS}
        scenarios.append({"name": scenario.name, "set": list(scenario.set),
                          "setup": describe_setup(reference.spec.config), "results": results})
    return {
        "version": SUMMARY_VERSION,
        "suite": suite.name,
        "description": suite.description,
        "source": str(suite.source),
        "quick": quick,
        "command": command,
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "wall_seconds": wall_seconds,
        **run_seconds(outcomes),
        "runs": len(outcomes),
        "runs_reused": sum(o.reused and o.shared_with is None for o in outcomes),
        "runs_shared": sum(o.shared_with is not None for o in outcomes),
        "seeds": sorted({o.spec.seed for o in outcomes}),
        "arms": [{"name": a.name, "kind": a.kind, "set": list(a.overrides),
                  "scenarios": list(a.scenarios) if a.scenarios else None, "method": _method_of(a.name, outcomes)}
                 for a in suite.arms],
        "roles": dict(suite.roles),
        "convergence": suite.convergence,
        "scenarios": scenarios,
        "coverage": coverage_summary(suite, outcomes),
        **({"samples": samples} if (samples := continuation_samples(suite, outcomes)) is not None else {}),
    }


def diagnose_outcomes(outcomes: Sequence[RunOutcome]) -> dict[Path, dict[str, float | None]]:
    """experiments/diagnostics.py on every run's final global model, by run folder (relative to the
    suite's); runs on the same data are measured together so each data set is loaded once, and a
    shared run is read from the folder of the run it shares."""
    by_data: dict[tuple, list[RunOutcome]] = {}
    for o in outcomes:
        by_data.setdefault(data_key(o.spec.config), []).append(o)
    out = {}
    for group in by_data.values():
        data = load_data(group[0].spec.config)
        for o in group:
            cfg = (o.shared_with or o.spec).config
            out[o.spec.relative_dir] = diagnose_run(cfg, cfg.output_dir, data)
    return out


def run_seconds(outcomes: Sequence[RunOutcome]) -> dict[str, Any]:
    """The wall time of the suite's runs added up (each computed once: shared runs count once), and
    how many runs recorded none (a run summary without `seconds.total`): those are left out of the
    sum, never counted as zero; None when no run recorded one."""
    own = [o.summary.get("seconds", {}).get("total") for o in outcomes if o.shared_with is None]
    timed = [t for t in own if t is not None]
    return {"run_seconds": sum(timed) if timed else None, "runs_untimed": len(own) - len(timed)}


def _method_of(arm: str, outcomes: Sequence[RunOutcome]) -> dict[str, Any]:
    """The method settings an arm runs with (the same in every scenario unless a scenario sets them)."""
    first = next(o for o in outcomes if o.spec.arm == arm)
    return first.spec.config.method.model_dump()


def coverage_summary(suite: Suite, outcomes: Sequence[RunOutcome]) -> dict[str, Any]:
    """Tile coverage of every arm in the suite's coverage scenario, for its first seed."""
    runs = [o.spec for o in outcomes if o.spec.scenario == suite.coverage_scenario]
    seed = min(r.seed for r in runs)
    replays = {r.arm: replay_coverage(r.config) for r in runs if r.seed == seed}
    cfg = runs[0].config
    return {"scenario": suite.coverage_scenario, "seed": seed, "out_group": OUT_GROUP, "in_group": IN_GROUP,
            "num_blocks": cfg.num_blocks, "rounds": cfg.rounds, "per_round": cfg.clients.per_round,
            "whole_tiles": {arm: c.whole_tiles.tolist() for arm, c in replays.items()},
            "tile_means": {arm: [[round(v, 3) for v in row] for row in c.tile_means().tolist()]
                           for arm, c in replays.items()},
            "notes": {arm: c.notes for arm, c in replays.items()}}


def plot_files(summary: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """File names of a suite's figures: one accuracy plot per scenario, one coverage figure."""
    names = {s["name"]: f"{prefix}accuracy_{s['name']}.png" for s in summary["scenarios"]}
    names["coverage"] = f"{prefix}coverage.png"
    return names


def write_suite_plots(summary: dict[str, Any], folder: str | Path, prefix: str = "") -> dict[str, Path]:
    """Draw the suite's figures into `folder`; returns figure key -> path."""
    folder = Path(folder)
    files = plot_files(summary, prefix)
    kinds = {a["name"]: a["kind"] for a in summary["arms"]}
    for scenario in summary["scenarios"]:
        setup = scenario["setup"]
        title = (f"{summary['suite']} / {scenario['name']}: {setup['dataset']} {setup['arch']}, "
                 f"{setup['partition_label']}, widths {format_widths(setup['widths'])}")
        plot_scenario_curves(scenario, kinds, folder / files[scenario["name"]], title)
    cov = summary["coverage"]
    plot_coverage(cov, list(kinds), folder / files["coverage"],
                  f"{summary['suite']} / {cov['scenario']} (seed {cov['seed']}): client plans that trained each "
                  f"tile (mean over its elements) of the weight between hidden groups {cov['in_group']} and "
                  f"{cov['out_group']}, "
                  f"{cov['rounds']} rounds x {cov['per_round']} clients")
    return {k: folder / v for k, v in files.items()}

