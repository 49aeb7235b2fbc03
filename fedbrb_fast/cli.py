"""The `fedbrb-fast` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .config import METHODS, ConfigError, load_config
from .runner import compare_methods, run_experiment

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Simulate model-heterogeneous (small-to-large) federated learning: FedBRB and its baselines.")

ConfigArg = Annotated[Optional[Path], typer.Argument(help="TOML config; the embedded default when left out")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="override a field, e.g. --set train.lr=0.1")]
DEFAULT_METHODS = "fedbrb,fedrolex,heterofl,fd,fedavg_small"


def _load(config: Path | None, overrides: list[str] | None):
    try:
        return load_config(config, overrides or [])
    except ConfigError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


@app.command()
def run(config: ConfigArg = None, set_: SetOpt = None) -> None:
    """Run one experiment; writes config.toml, metrics.jsonl/.csv and summary.json."""
    cfg = _load(config, set_)
    result = run_experiment(cfg)
    acc = result.summary["final_accuracy"]
    typer.echo(f"{cfg.method.name}: final accuracy {100 * acc:.2f}% -> {result.out_dir}")


@app.command()
def compare(config: ConfigArg = None, set_: SetOpt = None,
            methods: Annotated[str, typer.Option(help=f"comma-separated, from {', '.join(METHODS)}")] = DEFAULT_METHODS) -> None:
    """Run several methods on the same scenario; writes comparison.md and accuracy.png."""
    cfg = _load(config, set_)
    try:
        out = compare_methods(cfg, [m.strip() for m in methods.split(",") if m.strip()])
    except ConfigError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    typer.echo("\n" + out["table"])
    typer.echo(f"table: {out['out_dir'] / 'comparison.md'}\nplot:  {out['out_dir'] / 'accuracy.png'}")


@app.command("show-config")
def show_config(config: ConfigArg = None, set_: SetOpt = None) -> None:
    """Print the resolved config (defaults filled in, overrides applied)."""
    from .config import config_to_toml

    typer.echo(config_to_toml(_load(config, set_)))
