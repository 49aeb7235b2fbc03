"""How numbers read in the report: accuracies in %, differences in percentage points."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def pts(diff: float) -> str:
    """A difference of two accuracies in percentage points, with its sign."""
    return f"{100 * diff:+.1f} pts"


def mean_pm_std(stat: Mapping[str, Any] | None) -> str:
    if not stat or stat.get("mean") is None:
        return "—"
    missing = f" ({stat['missing']} failed)" if stat.get("missing") else ""
    if stat["n"] == 1:  # one seed has no spread to show
        return f"{100 * stat['mean']:.1f}{missing}"
    return f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}{missing}"


def format_widths(widths: Sequence[float]) -> str:
    """{1/4, 1/8} for reciprocals of integers, plain numbers otherwise."""
    def one(w: float) -> str:
        k = round(1 / w)
        return f"1/{k}" if abs(1 / w - k) < 1e-9 else f"{w:g}"
    return "{" + ", ".join(one(w) for w in widths) + "}"


def describe_method(method: Mapping[str, Any]) -> str:
    """A FedBRB arm's lam and schedule in words; other methods by name."""
    if method["name"] != "fedbrb":
        return method["name"]
    lam = f"lam={method['lam']:g}" if method["lam_schedule"] == "constant" else (
        f"lam {method['lam']:g}→{method['lam_end']:g} ({method['lam_schedule']})")
    return f"fedbrb, {lam}, {method['schedule']}"
