"""The `fedbrb-fast` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .checkpoint import CheckpointError
from .config import METHODS, ConfigError, load_config
from .engines import DistributedError, is_main_process
from .optional import MissingExtraError
from .runner import RunInterrupted, compare_methods, resume_experiment, run_experiment

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Simulate model-heterogeneous (small-to-large) federated learning: FedBRB and its baselines.")

ConfigArg = Annotated[Optional[Path], typer.Argument(help="TOML config; the embedded default when left out")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="override a field, e.g. --set train.lr=0.1")]
DEFAULT_METHODS = "fedbrb,fedrolex,heterofl,fd,fedavg_small"


def _load(config: Path | None, overrides: list[str] | None):
    try:
        return load_config(config, overrides or [])
    except ConfigError as exc:
        raise _fail(str(exc)) from None


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


@app.command()
def run(config: ConfigArg = None, set_: SetOpt = None,
        resume: Annotated[Optional[Path], typer.Option(help="continue the run in this output folder")] = None) -> None:
    """Run one experiment; writes config.toml, metrics.jsonl/.csv, events.jsonl, checkpoints,
    model.safetensors and summary.json. SIGINT/SIGTERM stop it after a checkpoint."""
    try:
        if resume is not None:
            if config is not None or set_:
                raise _fail("--resume continues a run with its saved config; give no CONFIG or --set")
            result = resume_experiment(resume)
        else:
            result = run_experiment(_load(config, set_))
    except (ConfigError, CheckpointError, MissingExtraError) as exc:
        raise _fail(str(exc)) from None
    except DistributedError as exc:
        raise _fail(str(exc), code=1) from None
    except RunInterrupted as exc:
        typer.secho(str(exc), fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(130) from None
    if is_main_process():  # one line per run, not per rank
        acc = result.summary["final_accuracy"]
        typer.echo(f"{result.summary['method']}: final accuracy {100 * acc:.2f}% -> {result.out_dir}")


@app.command()
def compare(config: ConfigArg = None, set_: SetOpt = None,
            methods: Annotated[str, typer.Option(help=f"comma-separated, from {', '.join(METHODS)}")] = DEFAULT_METHODS) -> None:
    """Run several methods on the same scenario; writes comparison.md and accuracy.png."""
    cfg = _load(config, set_)
    try:
        out = compare_methods(cfg, [m.strip() for m in methods.split(",") if m.strip()])
    except (ConfigError, MissingExtraError) as exc:
        raise _fail(str(exc)) from None
    except DistributedError as exc:
        raise _fail(str(exc), code=1) from None
    typer.echo("\n" + out["table"])
    typer.echo(f"table: {out['out_dir'] / 'comparison.md'}\nplot:  {out['out_dir'] / 'accuracy.png'}")


@app.command("show-config")
def show_config(config: ConfigArg = None, set_: SetOpt = None) -> None:
    """Print the resolved config (defaults filled in, overrides applied)."""
    from .config import config_to_toml

    typer.echo(config_to_toml(_load(config, set_)))


# --- experiment suites (fedbrb_fast.experiments) -------------------------------------------------

SUITE_RUNS, QUICK_SUITE_RUNS = Path("runs/suites"), Path("runs/suites-quick")


@app.command()
def suite(suite_file: Annotated[Path, typer.Argument(help="suite TOML, e.g. examples/suites/mnist1d_mlp.toml")],
          quick: Annotated[bool, typer.Option(help="smoke test: the suite's [quick] seeds and overrides")] = False,
          out: Annotated[Optional[Path], typer.Option(help=f"runs folder (default {SUITE_RUNS}; {QUICK_SUITE_RUNS} "
                                                           "with --quick)")] = None) -> None:
    """Run every scenario x method/variant x seed of a suite on shared data; writes the run folders,
    <out>/<suite>/summary.json (mean ± std over seeds) and plots. Finished runs are reused, so the
    same command resumes an interrupted suite."""
    import shlex

    from .experiments import load_suite, run_suite
    from .experiments.report import results_table

    command = shlex.join(["fedbrb-fast", "suite", str(suite_file), *(["--quick"] if quick else []),
                          *(["--out", str(out)] if out is not None else [])])
    root = out if out is not None else (QUICK_SUITE_RUNS if quick else SUITE_RUNS)
    try:
        summary = run_suite(load_suite(suite_file), root, quick=quick, command=command)
    except (ConfigError, MissingExtraError) as exc:
        raise _fail(str(exc)) from None
    except RunInterrupted as exc:
        typer.secho(f"{exc}\nrun the same command again to continue the suite", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(130) from None
    typer.echo(f"\n{summary['suite']}: final test accuracy (%), mean ± std over seeds {summary['seeds']}\n")
    typer.echo(results_table(summary))
    typer.echo(f"\nsummary: {root / summary['suite'] / 'summary.json'}  ({summary['wall_seconds']:.0f} s)")


@app.command()
def report(runs: Annotated[Path, typer.Argument(help="folder holding <suite>/summary.json")] = SUITE_RUNS,
           out: Annotated[Path, typer.Option(help="the report; figures go to results/ beside it")] = Path(
               "docs/results.md")) -> None:
    """Assemble the results report (tables, commands, machine, plots, claims, reading) from suite summaries."""
    import shlex

    from .experiments import ReportError, load_summaries, write_report

    command = shlex.join(["fedbrb-fast", "report", str(runs), "--out", str(out)])
    try:
        path = write_report(load_summaries(runs), out, command=command)
    except (ReportError, MissingExtraError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"report: {path}")


if __name__ == "__main__":
    app()
