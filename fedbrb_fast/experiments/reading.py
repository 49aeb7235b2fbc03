"""The report's "honest reading": sentences computed from a suite summary, never written by hand.

Every comparison says whether it exceeds one standard deviation (the larger of the two arms'),
so a reader can tell a difference from seed noise."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .claims import Pair, pair
from .diagnostics_report import diagnostics_reading
from .formatting import describe_arm, pct, pts
from .headroom import HEADROOM_MIN_POINTS, LOWER_BOUND, UPPER_BOUND, has_headroom, headroom_points


def _noise_word(p: Pair) -> str:
    return "beyond one std" if abs(p.diff) > p.noise else "within one std"


def _methods(summary: Mapping[str, Any]) -> list[str]:
    return [a["name"] for a in summary["arms"] if a["kind"] == "method"]


def _pairs(summary: Mapping[str, Any], a: str, b: str) -> list[tuple[str, Pair]]:
    return [(s["name"], p) for s in summary["scenarios"] if (p := pair(s, a, b)) is not None]


def fedbrb_standing(summary: Mapping[str, Any]) -> list[str]:
    """Where FedBRB is the best small-to-large method (every method but the fedavg upper bound)."""
    rivals = [m for m in _methods(summary) if m not in ("fedbrb", UPPER_BOUND)]
    if "fedbrb" not in _methods(summary) or not rivals:
        return []
    wins, losses = [], []
    for s in summary["scenarios"]:
        pairs = [p for r in rivals if (p := pair(s, "fedbrb", r)) is not None]
        if not pairs:
            continue
        closest = min(pairs, key=lambda p: p.diff)  # the strongest rival
        if closest.beats:
            wins.append(f"{s['name']} ({pts(closest.diff)} over {closest.b}, {_noise_word(closest)})")
        else:
            losses.append(f"{s['name']} ({closest.b} {pct(closest.mean_b)} vs {pct(closest.mean_a)}, "
                          f"{pts(closest.diff)}, {_noise_word(closest)})")
    total = len(wins) + len(losses)
    out = [f"FedBRB has the best final accuracy among the small-to-large methods ({', '.join(['fedbrb', *rivals])}) "
           f"in {len(wins)} of {total} scenarios" + (f": {'; '.join(wins)}." if wins else ".")]
    if losses:
        out.append(f"It is not ahead in {len(losses)} of {total}: {'; '.join(losses)}.")
    return out


def bounds(summary: Mapping[str, Any]) -> list[str]:
    out = []
    low = _pairs(summary, "fedbrb", LOWER_BOUND)
    if low:
        better = [name for name, p in low if p.beats]
        clear = sum(p.clearly_beats for _, p in low)
        out.append(f"Against the lower bound {LOWER_BOUND} (everyone trains the small model): FedBRB is higher in "
                   f"{len(better)} of {len(low)} scenarios ({clear} beyond one std), mean difference "
                   f"{pts(_mean(p.diff for _, p in low))}.")
        roomy = [p for s in summary["scenarios"] if has_headroom(headroom_points(s))
                 and (p := pair(s, "fedbrb", LOWER_BOUND)) is not None]
        if roomy:
            out.append(f"In the {len(roomy)} scenarios with at least {HEADROOM_MIN_POINTS:g} pts of headroom, where "
                       f"the large model matters, FedBRB is higher than {LOWER_BOUND} in {sum(p.beats for p in roomy)} "
                       f"({sum(p.clearly_beats for p in roomy)} beyond one std).")
    high = _pairs(summary, "fedbrb", UPPER_BOUND)
    if high:
        gaps = [p.diff for _, p in high]
        out.append(f"Against the upper bound {UPPER_BOUND} (full model on every client): FedBRB differs by "
                   f"{pts(_mean(gaps))} on average (from {pts(min(gaps))} to {pts(max(gaps))}).")
    return out


def lam_effect(summary: Mapping[str, Any]) -> list[str]:
    """lam = 0 (rolling alone) against constant and decaying lam, over the scenarios where all ran."""
    roles = summary.get("roles", {})
    arms = [(role, roles[role]) for role in ("lam_zero", "lam_constant", "lam_decay") if role in roles]
    if len(arms) < 2:
        return []
    scenarios = [s for s in summary["scenarios"]
                 if all(s["results"].get(a, {}).get("final_accuracy", {}).get("mean") is not None for _, a in arms)]
    if not scenarios:
        return []
    means = {a: _mean(s["results"][a]["final_accuracy"]["mean"] for s in scenarios) for _, a in arms}
    best = {a: 0 for _, a in arms}
    for s in scenarios:
        best[max((a for _, a in arms), key=lambda a: s["results"][a]["final_accuracy"]["mean"])] += 1
    listed = "; ".join(f"{a} ({describe_arm(summary, a)}) {pct(means[a])}, best in {best[a]}" for _, a in arms)
    out = [f"Effect of lam over the {len(scenarios)} scenarios where {', '.join(a for _, a in arms)} all ran "
           f"(mean final accuracy; scenarios where it is best): {listed}."]
    if "lam_zero" in roles:
        zero = roles["lam_zero"]
        for _, other in (x for x in arms if x[0] != "lam_zero"):
            ps = [p for s in scenarios if (p := pair(s, other, zero)) is not None]  # all, as both arms have means
            out.append(f"{other} vs {zero}: mean difference {pts(_mean(p.diff for p in ps))}; higher in "
                       f"{sum(p.beats for p in ps)} of {len(ps)} scenarios, beyond one std in "
                       f"{sum(abs(p.diff) > p.noise for p in ps)}.")
    return out


def shear_effect(summary: Mapping[str, Any]) -> list[str]:
    """The shear schedule (full tile coverage) against the diagonal ablation."""
    roles = summary.get("roles", {})
    if "diagonal" not in roles:
        return []
    shear = roles.get("lam_constant", "fedbrb")
    ps = _pairs(summary, shear, roles["diagonal"])
    if not ps:
        return []
    return [f"Shear vs diagonal schedule ({shear} vs {roles['diagonal']}): mean difference "
            f"{pts(_mean(p.diff for _, p in ps))}; the shear schedule is higher in {sum(p.beats for _, p in ps)} of "
            f"{len(ps)} scenarios, beyond one std in {sum(abs(p.diff) > p.noise for _, p in ps)}."]


def lower_bound_passes(summary: Mapping[str, Any]) -> list[str]:
    """Per scenario, the arms (methods and variants, all but the fedavg upper bound) whose final
    accuracy is above fedavg_small's: can a small-to-large method pass the small model trained alone."""
    names = [a["name"] for a in summary["arms"] if a["name"] not in (LOWER_BOUND, UPPER_BOUND)]
    parts = []
    for s in summary["scenarios"]:
        pairs = [p for a in names if (p := pair(s, a, LOWER_BOUND)) is not None]
        if not pairs:
            continue
        above = sorted((p for p in pairs if p.beats), key=lambda p: -p.diff)
        if above:
            parts.append(f"{s['name']}: " + ", ".join(f"{p.a} {pts(p.diff)} ({_noise_word(p)})" for p in above))
        else:
            closest = max(pairs, key=lambda p: p.diff)
            parts.append(f"{s['name']}: none (closest {closest.a}, {pts(closest.diff)})")
    if not parts:
        return []
    return [f"Arms above the lower bound {LOWER_BOUND} (every arm but {UPPER_BOUND}; final accuracy): "
            + "; ".join(parts) + "."]


def variant_effects(summary: Mapping[str, Any]) -> list[str]:
    """Every variant without a role (the roles have their own sentences) and the tiled-init role,
    against the method it runs, scenario by scenario."""
    roles = summary.get("roles", {})
    roled = {arm for role, arm in roles.items() if role != "tiled_init"}
    out = []
    for arm in summary["arms"]:
        method = arm["method"]["name"]
        if arm["kind"] != "variant" or arm["name"] in roled or not any(a["name"] == method for a in summary["arms"]):
            continue
        ps = _pairs(summary, arm["name"], method)
        if not ps:
            continue
        per = "; ".join(f"{name} {pts(p.diff)} ({_noise_word(p)})" for name, p in ps)
        out.append(f"{arm['name']} − {method} ({describe_arm(summary, arm['name'])}; `{' '.join(arm['set'])}`): "
                   f"{per}; mean {pts(_mean(p.diff for _, p in ps))}.")
    return out


def honest_reading(summary: Mapping[str, Any]) -> list[str]:
    return [*fedbrb_standing(summary), *bounds(summary), *lower_bound_passes(summary), *lam_effect(summary),
            *shear_effect(summary), *variant_effects(summary), *diagnostics_reading(summary)]


def _mean(values: Sequence[float] | Any) -> float:
    values = list(values)
    return sum(values) / len(values)
