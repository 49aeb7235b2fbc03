"""How numbers read in the report: accuracies in %, differences in percentage points."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from typing import Any

from ..aggregation.rule import own_update_share


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


def share(value: float) -> str:
    """An own-update share: 1/65 where it is one over a whole number, else a percentage."""
    if value in (0.0, 1.0):
        return f"{value:g}"
    frac = Fraction(value).limit_denominator(10**6)
    if frac.numerator == 1 and abs(float(frac) - value) < 1e-12:
        return f"1/{frac.denominator}"
    return f"{100 * value:.3g}%"


def own_shares(method: Mapping[str, Any], num_blocks: Iterable[int]) -> str:
    """What a tile of a hidden-to-hidden weight (T = K^2 tiles) keeps of its own update under the
    arm's lam, at each K (docs/algorithm.md#aggregation): "own-update share 1/65 at K=8"; a schedule's first→last."""
    def at(k: int) -> str:
        first = share(own_update_share(method["lam"], k * k))
        if method["lam_schedule"] == "constant":
            return first
        return f"{first}→{share(own_update_share(method['lam_end'], k * k))}"
    by_share: dict[str, list[int]] = {}
    for k in sorted(set(num_blocks)):
        by_share.setdefault(at(k), []).append(k)
    return "own-update share " + ", ".join(f"{text} at K={', '.join(map(str, ks))}" for text, ks in by_share.items())


def describe_method(method: Mapping[str, Any], num_blocks: Iterable[int] = ()) -> str:
    """A FedBRB arm's lam (with its own-update share at each K of `num_blocks`) and schedule in
    words; other methods by name."""
    if method["name"] != "fedbrb":
        return method["name"]
    ks = sorted(set(num_blocks))
    if method["lam_schedule"] == "constant":
        lam = f"lam={method['lam']:g}" + (f" ({own_shares(method, ks)})" if ks else "")
    else:
        lam = (f"lam {method['lam']:g}→{method['lam_end']:g} ({method['lam_schedule']}"
               + (f"; {own_shares(method, ks)})" if ks else ")"))
    tiled = ", tiled init" if method.get("init") == "tiled" else ""  # summaries before the option lack it
    return f"fedbrb, {lam}, {method['schedule']}{tiled}"


def arm_num_blocks(summary: Mapping[str, Any], arm: str) -> list[int]:
    """The K (blocks per axis) of every scenario in which the arm ran."""
    return sorted({int(k) for s in summary["scenarios"]
                   if arm in s["results"] and (k := s["setup"].get("num_blocks")) is not None})


def describe_arm(summary: Mapping[str, Any], arm: str) -> str:
    """describe_method for one of the suite's arms, with its own-update share at the suite's K."""
    method = next(a["method"] for a in summary["arms"] if a["name"] == arm)
    return describe_method(method, arm_num_blocks(summary, arm))
