"""Comparison outputs a person reads: a markdown table and an accuracy-vs-round plot."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .atomic import atomic_write_bytes
from .pyplot import pyplot

PLOT = "the accuracy plot (accuracy.png)"


def _fmt(value: float | None, pct: bool = False) -> str:
    if value is None:
        return "—"
    return f"{100 * value:.2f}" if pct else f"{value:.4f}"


def comparison_table(summaries: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown: one row per method, best final accuracy first."""
    order = sorted(summaries, key=lambda m: -(summaries[m].get("final_accuracy") or 0.0))
    lines = ["| method | final acc (%) | best acc (%) | final loss | rounds | wall time (s) |",
             "|---|---:|---:|---:|---:|---:|"]
    for m in order:
        s = summaries[m]
        lines.append(
            f"| {m} | {_fmt(s.get('final_accuracy'), True)} | {_fmt(s.get('best_accuracy'), True)} | "
            f"{_fmt(s.get('final_loss'))} | {s.get('rounds')} | {s.get('seconds', {}).get('total', 0.0):.1f} |"
        )
    return "\n".join(lines) + "\n"


def plot_accuracy(histories: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path, title: str) -> None:
    """Test accuracy against round, one line per method, written atomically as PNG."""
    plt = pyplot(PLOT)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for method, rows in histories.items():
        pts = [(r["round"], 100 * r["accuracy"]) for r in rows if r.get("accuracy") is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o" if len(pts) < 30 else None, markersize=3, label=method)
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
