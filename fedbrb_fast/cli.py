"""The `fedbrb-fast` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .checkpoint import CheckpointError
from .config import METHODS, ConfigError, load_config
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
    except (ConfigError, CheckpointError) as exc:
        raise _fail(str(exc)) from None
    except RunInterrupted as exc:
        typer.secho(str(exc), fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(130) from None
    acc = result.summary["final_accuracy"]
    typer.echo(f"{result.summary['method']}: final accuracy {100 * acc:.2f}% -> {result.out_dir}")


@app.command()
def compare(config: ConfigArg = None, set_: SetOpt = None,
            methods: Annotated[str, typer.Option(help=f"comma-separated, from {', '.join(METHODS)}")] = DEFAULT_METHODS) -> None:
    """Run several methods on the same scenario; writes comparison.md and accuracy.png."""
    cfg = _load(config, set_)
    try:
        out = compare_methods(cfg, [m.strip() for m in methods.split(",") if m.strip()])
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    typer.echo("\n" + out["table"])
    typer.echo(f"table: {out['out_dir'] / 'comparison.md'}\nplot:  {out['out_dir'] / 'accuracy.png'}")


@app.command("show-config")
def show_config(config: ConfigArg = None, set_: SetOpt = None) -> None:
    """Print the resolved config (defaults filled in, overrides applied)."""
    from .config import config_to_toml

    typer.echo(config_to_toml(_load(config, set_)))


if __name__ == "__main__":
    app()
