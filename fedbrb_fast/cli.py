"""The `fedbrb-fast` command line.

Every failure a user can cause or meet ends in one `error:` line that names the path and the
problem, with exit code 2 for bad input (config, paths, data files, checkpoints) and 1 for a
failure during the run (a full disk, a dead rank); `--debug` adds the traceback (never locals)."""

from __future__ import annotations

import errno
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import click
import typer

from .checkpoint import CheckpointError
from .config import ConfigError, load_config
from .engines import DistributedError, is_main_process
from .experiments import ReportError
from .methods import METHODS
from .optional import MissingExtraError
from .outputs import OutputDirError
from .runner import DataError, RunInterrupted, RunWriteFailed, compare_methods, resume_experiment, run_experiment

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="Simulate model-heterogeneous (small-to-large) federated learning: FedBRB and its baselines.")

ConfigArg = Annotated[Path | None, typer.Argument(help="TOML config; the embedded default when left out")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="override a field, e.g. --set train.lr=0.1")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="on an error, print the traceback as well")]
DEFAULT_METHODS = "fedbrb,fedrolex,heterofl,fd,fedavg_small,fedavg"

BAD_INPUT = (ConfigError, CheckpointError, OutputDirError, DataError, ReportError, MissingExtraError)
RUN_FAILURES = (RunWriteFailed, DistributedError)
# An OSError with one of these is about a path the user gave (exit 2); others are the machine's (exit 1).
PATH_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR, errno.EISDIR,
                         errno.EEXIST})


@contextmanager
def _reported(debug: bool) -> Iterator[None]:
    """Turn every exception into one `error:` line and an exit code (the traceback only with --debug)."""
    try:
        yield
    except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
        raise
    except RunInterrupted as exc:
        typer.secho(str(exc), fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(130) from None
    except KeyboardInterrupt:
        typer.secho("interrupted", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(130) from None
    except Exception as exc:
        if debug:
            traceback.print_exc()
        code, message = _explain(exc)
        typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code) from None


def _explain(exc: Exception) -> tuple[int, str]:
    if isinstance(exc, BAD_INPUT):
        return 2, str(exc)
    if isinstance(exc, RUN_FAILURES):
        return 1, str(exc)
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return (2 if exc.errno in PATH_ERRNOS else 1), f"{where}{exc.strerror or exc}"
    return 1, (f"unexpected {type(exc).__name__}: {exc} (a bug in fedbrb-fast; rerun with --debug for the traceback "
               "and report it)")


@app.command()
def run(config: ConfigArg = None, set_: SetOpt = None,
        resume: Annotated[Path | None, typer.Option(
            help="continue the unfinished run in this output folder, with its saved config")] = None,
        overwrite: Annotated[bool, typer.Option(
            "--overwrite", help="replace the run already in output_dir (its files are removed first)")] = False,
        debug: DebugOpt = False) -> None:
    """Run one experiment; writes config.toml, metrics.jsonl/.csv, events.jsonl, checkpoints,
    model.safetensors and summary.json. An output_dir that already holds a run is refused unless
    --overwrite. SIGINT/SIGTERM stop it after a checkpoint."""
    with _reported(debug):
        if resume is not None:
            if config is not None or set_:
                raise ConfigError("--resume continues a run with its saved config; give no CONFIG or --set")
            if overwrite:
                raise ConfigError("--resume keeps the run in its folder and --overwrite replaces it: choose one")
            result = resume_experiment(resume)
        else:
            result = run_experiment(load_config(config, set_ or []), overwrite=overwrite)
    if is_main_process():  # one line per run, not per rank
        acc = result.summary["final_accuracy"]
        shown = "—" if acc is None else f"{100 * acc:.2f}%"
        typer.echo(f"{result.summary['method']}: final accuracy {shown} -> {result.out_dir}")


@app.command()
def compare(config: ConfigArg = None, set_: SetOpt = None,
            methods: Annotated[str, typer.Option(help=f"comma-separated, from {', '.join(METHODS)}")] = DEFAULT_METHODS,
            resume: Annotated[bool, typer.Option(
                "--resume", help="continue the comparison in output_dir (same CONFIG, --set and --methods): "
                                 "finished runs are kept, unfinished ones continue, missing ones run")] = False,
            overwrite: Annotated[bool, typer.Option(
                "--overwrite", help="replace the runs already in output_dir (their files are removed first)")] = False,
            debug: DebugOpt = False) -> None:
    """Run several methods on the same scenario; writes comparison.md and accuracy.png. An
    output_dir that already holds runs is refused unless --resume or --overwrite."""
    with _reported(debug):
        out = compare_methods(load_config(config, set_ or []), [m.strip() for m in methods.split(",") if m.strip()],
                              resume=resume, overwrite=overwrite)
    typer.echo("\n" + out["table"])
    typer.echo(f"table: {out['out_dir'] / 'comparison.md'}\nplot:  {out['out_dir'] / 'accuracy.png'}")


@app.command("show-config")
def show_config(config: ConfigArg = None, set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Print the resolved config (defaults filled in, overrides applied)."""
    from .config import config_to_toml

    with _reported(debug):
        typer.echo(config_to_toml(load_config(config, set_ or [])))


# --- experiment suites (fedbrb_fast.experiments) -------------------------------------------------

SUITE_RUNS, QUICK_SUITE_RUNS = Path("runs/suites"), Path("runs/suites-quick")


@app.command()
def suite(suite_file: Annotated[Path, typer.Argument(help="suite TOML, e.g. examples/suites/mnist1d_mlp.toml")],
          quick: Annotated[bool, typer.Option(help="smoke test: the suite's [quick] seeds and overrides")] = False,
          out: Annotated[Path | None, typer.Option(help=f"runs folder (default {SUITE_RUNS}; {QUICK_SUITE_RUNS} "
                                                           "with --quick)")] = None,
          overwrite: Annotated[bool, typer.Option(
              "--overwrite", help="replace run folders that hold a run of another config (the suite changed)")] = False,
          debug: DebugOpt = False) -> None:
    """Run every scenario x method/variant x seed of a suite on shared data; writes the run folders,
    <out>/<suite>/summary.json (mean ± std over seeds) and plots. Finished runs of the same config
    are reused, so the same command resumes an interrupted suite; a run folder holding a run of
    another config is refused unless --overwrite."""
    import shlex

    from .experiments import load_suite, run_suite
    from .experiments.report import results_table

    command = shlex.join(["fedbrb-fast", "suite", str(suite_file), *(["--quick"] if quick else []),
                          *(["--out", str(out)] if out is not None else [])])
    root = out if out is not None else (QUICK_SUITE_RUNS if quick else SUITE_RUNS)
    with _reported(debug):
        try:
            summary = run_suite(load_suite(suite_file), root, quick=quick, command=command, overwrite=overwrite)
        except RunInterrupted as exc:
            raise RunInterrupted(f"{exc}\nrun the same command again to continue the suite") from None
    typer.echo(f"\n{summary['suite']}: final test accuracy (%), mean ± std over seeds {summary['seeds']}\n")
    typer.echo(results_table(summary))
    typer.echo(f"\nsummary: {root / summary['suite'] / 'summary.json'}  ({summary['wall_seconds']:.0f} s)")


@app.command()
def report(runs: Annotated[Path, typer.Argument(help="folder holding <suite>/summary.json")] = SUITE_RUNS,
           out: Annotated[Path, typer.Option(help="the report; figures go to results/ beside it")] = Path(
               "docs/results.md"),
           debug: DebugOpt = False) -> None:
    """Assemble the results report (tables, commands, machine, plots, claims, reading) from suite summaries."""
    import shlex

    from .experiments import load_summaries, write_report

    command = shlex.join(["fedbrb-fast", "report", str(runs), "--out", str(out)])
    with _reported(debug):
        path = write_report(load_summaries(runs), out, command=command)
    typer.echo(f"report: {path}")


if __name__ == "__main__":
    app()
