"""The report's view of the global-model diagnostics (experiments/diagnostics.py) a suite with
`diagnose = true` records: a table per scenario and sentences computed from it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .diagnostics import DIAGNOSTICS
from .headroom import LOWER_BOUND, UPPER_BOUND

LABELS = {"test_loss": "test loss", "temperature": "fitted temperature",
          "loss_at_temperature": "test loss at that temperature", "logit_scale": "logit scale vs its sub-models",
          "submodel_accuracy": "sub-model accuracy", "tile_coherence": "tile coherence"}
PERCENT = ("submodel_accuracy",)
COPY_COHERENCE = 0.95  # tile coherence from which the reading calls the global model copies of one sub-model
SCALE_TOLERANCE = 0.15  # logit scale within this fraction of K: the classifier's K-fold sum


def has_diagnostics(summary: Mapping[str, Any]) -> bool:
    return any("diagnostics" in r for s in summary["scenarios"] for r in s["results"].values())


def value(stat: Mapping[str, Any] | None) -> str:
    """A diagnostic's mean to 3 significant digits (whole numbers from 100 up) and its std over seeds
    to as many decimals; "—" where there is none."""
    if not stat or stat.get("mean") is None:
        return "—"
    places = _places(stat["mean"])
    text = f"{stat['mean']:.{places}f}"
    return text if stat.get("n", 1) == 1 else f"{text} ± {stat['std']:.{places}f}"


def _places(x: float) -> int:
    """Decimals that give 3 significant digits below 100, none from 100 up."""
    return 0 if x == 0 or abs(x) >= 100 else max(0, 2 - math.floor(math.log10(abs(x))))


def _number(x: float) -> str:
    return f"{x:.{_places(x)}f}"


def _percent(stat: Mapping[str, Any] | None) -> str:
    if not stat or stat.get("mean") is None:
        return "—"
    return f"{100 * stat['mean']:.1f}" + ("" if stat.get("n", 1) == 1 else f" ± {100 * stat['std']:.1f}")


def diagnostics_section(summary: Mapping[str, Any]) -> str:
    """Per scenario, every arm's final accuracy beside its global model's diagnostics."""
    if not has_diagnostics(summary):
        return ""
    k = sorted({s["setup"]["num_blocks"] for s in summary["scenarios"]})
    lines = ["**The final global models, measured** (experiments/diagnostics.py; mean ± std over seeds). Fitted "
             "temperature: the T minimizing the cross-entropy of logits / T over the test set, fitted on its even "
             "and its odd samples (their geometric mean; above 1: overconfident); test loss at that temperature: each "
             "half scored at the T fitted on the other; logit scale: the spread of the global model's logits over the "
             f"classes divided by that of its K diagonal width-1/K sub-models (K = {', '.join(map(str, k))}), each run "
             "as a client runs it; "
             "sub-model accuracy: their mean test accuracy (%); tile coherence: ‖mean tile‖ / rms tile norm of the "
             "weight between hidden groups 0 and 1 (1: every tile equal; about 1/K for independent tiles). "
             f"{LOWER_BOUND}'s global model is the small model itself: no sub-models or tiles."]
    header = ("| arm | accuracy (%) | " + " | ".join(LABELS[d] for d in DIAGNOSTICS) + " |\n|---|---:|"
              + "---:|" * len(DIAGNOSTICS))
    for s in summary["scenarios"]:
        rows = [header]
        for arm in summary["arms"]:
            r = s["results"].get(arm["name"])
            if r is None or "diagnostics" not in r:
                continue
            d = r["diagnostics"]
            cells = [_percent(d[n]) if n in PERCENT else value(d[n]) for n in DIAGNOSTICS]
            rows.append(f"| {arm['name']} | {_percent(r['final_accuracy'])} | " + " | ".join(cells) + " |")
        lines += ["", f"Scenario `{s['name']}`:", "", "\n".join(rows)]
    return "\n".join(lines)


def _per_scenario(summary: Mapping[str, Any], arm: str, pick: Any, only: Any = None) -> str:
    """"gn 7.8, ln 7.9" over the scenarios where the arm has the number (and, given `only`, where
    that arm has diagnostics too)."""
    parts = []
    for s in summary["scenarios"]:
        r = s["results"].get(arm)
        if only is not None and "diagnostics" not in s["results"].get(only, {}):
            continue
        text = pick(r) if r is not None and "diagnostics" in r else None
        if text is not None:
            parts.append(f"{s['name']} {text}")
    return ", ".join(parts)


def _diag(name: str, percent: bool = False) -> Any:
    def pick(r: Mapping[str, Any]) -> str | None:
        stat = r["diagnostics"].get(name)
        if not stat or stat.get("mean") is None:
            return None
        return f"{100 * stat['mean']:.1f}%" if percent else _number(stat["mean"])
    return pick


def _accuracy(r: Mapping[str, Any]) -> str | None:
    mean = r["final_accuracy"]["mean"]
    return None if mean is None else f"{100 * mean:.1f}%"


def _mean(r: Mapping[str, Any] | None, name: str) -> float | None:
    if r is None or "diagnostics" not in r:
        return None
    stat = r["final_accuracy"] if name == "accuracy" else r["diagnostics"].get(name)
    return stat["mean"] if stat else None


def _std(r: Mapping[str, Any], name: str) -> float:
    stat = r["final_accuracy"] if name == "accuracy" else r["diagnostics"][name]
    return stat["std"] or 0.0


def why_fedbrb_trails(summary: Mapping[str, Any]) -> list[str]:
    """What the diagnostics say about FedBRB against fedavg_small, each statement with the rule it
    applies: the global model as copies of one sub-model, its overconfidence as the classifier's
    K-fold sum, the share of the sub-model's gap that the tiled init closes, and where the global
    model falls below its own sub-models."""
    if not has_diagnostics(summary):
        return []
    names = {a["name"] for a in summary["arms"]}
    if "fedbrb" not in names:
        return []
    tiled = summary.get("roles", {}).get("tiled_init")
    copies, scaled, gaps, broken = [], [], [], []
    for s in summary["scenarios"]:
        res, k = s["results"], s["setup"]["num_blocks"]
        brb, small = res.get("fedbrb"), res.get(LOWER_BOUND)
        coherence, sub, acc = _mean(brb, "tile_coherence"), _mean(brb, "submodel_accuracy"), _mean(brb, "accuracy")
        if brb is None or coherence is None or sub is None or acc is None:
            continue
        copy = coherence >= COPY_COHERENCE and abs(acc - sub) <= max(_std(brb, "accuracy"),
                                                                     _std(brb, "submodel_accuracy"))
        if copy:
            copies.append(f"{s['name']} ({coherence:.3f}; {100 * acc:.1f}% vs {100 * sub:.1f}%)")
        scale = _mean(brb, "logit_scale")
        if scale is not None and abs(scale - k) <= SCALE_TOLERANCE * k:
            scaled.append(f"{s['name']} ({_number(scale)}, temperature {_number(_mean(brb, 'temperature') or 0)})")
        if copy and small is not None and small["final_accuracy"]["mean"] is not None:
            gap = 100 * (sub - small["final_accuracy"]["mean"])
            closed = _mean(res.get(tiled), "submodel_accuracy") if tiled else None
            gaps.append(f"{s['name']} {gap:+.1f} pts" + ("" if closed is None else
                        f", from the tiled init {100 * (closed - small['final_accuracy']['mean']):+.1f} pts"))
        for arm in (a["name"] for a in summary["arms"] if a["method"]["name"] == "fedbrb"):
            r = res.get(arm)
            a_sub, a_acc = _mean(r, "submodel_accuracy"), _mean(r, "accuracy")
            if r is not None and a_sub is not None and a_acc is not None and \
                    a_sub - a_acc > max(_std(r, "accuracy"), _std(r, "submodel_accuracy")):
                broken.append(f"{arm} in {s['name']} ({100 * a_acc:.1f}% vs {100 * a_sub:.1f}%)")
    out = []
    if copies:
        out.append(f"Why FedBRB does not pass {LOWER_BOUND}: its global model is close to K x K copies of one "
                   f"width-1/K sub-model (tile coherence at least {COPY_COHERENCE:g}) and scores what its sub-models "
                   f"score (within one std) in {', '.join(copies)} (coherence; global vs sub-model accuracy): a "
                   f"model no larger than {LOWER_BOUND}'s, so at best its equal.")
    if scaled:
        out.append(f"Its overconfidence is the classifier summing K equal blocks: its logits are K times as spread as "
                   f"its sub-models' (within {100 * SCALE_TOLERANCE:g}% of K) in {', '.join(scaled)}.")
    if gaps:
        out.append(f"There, its sub-models against {LOWER_BOUND}'s accuracy: {'; '.join(gaps)}"
                   + (" (the tiled init removes the tiles' independent starting points, which broadcast never averages "
                      "away)." if tiled else "."))
    if broken:
        out.append("Global model below its own sub-models by more than one std (a K x K tiled model computes its "
                   "sub-model's function only where a norm divides the K-fold sums out exactly, "
                   f"docs/algorithm.md#tiled-init): {', '.join(broken)}.")
    return out


def diagnostics_reading(summary: Mapping[str, Any]) -> list[str]:
    """Sentences from the diagnostics: FedBRB's calibration, logit scale, tiles and sub-models, and
    the bounds' calibration and tiles to read them against."""
    if not has_diagnostics(summary):
        return []
    k = sorted({s["setup"]["num_blocks"] for s in summary["scenarios"]})
    names = [a["name"] for a in summary["arms"]]
    tiled = summary.get("roles", {}).get("tiled_init")
    out = why_fedbrb_trails(summary)
    for arm in [a for a in ("fedbrb", tiled) if a in names and _per_scenario(summary, a, _diag("temperature"))]:
        out.append(
            f"Calibration of {arm}'s global model (K = {', '.join(map(str, k))}): fitted temperature "
            f"{_per_scenario(summary, arm, _diag('temperature'))}; logit scale against its width-1/K sub-models "
            f"{_per_scenario(summary, arm, _diag('logit_scale'))}; test loss "
            f"{_per_scenario(summary, arm, _diag('test_loss'))}, and at the fitted temperature "
            f"{_per_scenario(summary, arm, _diag('loss_at_temperature'))}.")
    for arm in [a["name"] for a in summary["arms"] if a["method"]["name"] == "fedbrb"]:
        if not _per_scenario(summary, arm, _diag("tile_coherence")):
            continue
        out.append(
            f"Tiles of {arm}'s global model: coherence {_per_scenario(summary, arm, _diag('tile_coherence'))}; its "
            f"width-1/K sub-models reach {_per_scenario(summary, arm, _diag('submodel_accuracy', percent=True))} "
            f"against the global model's {_per_scenario(summary, arm, _accuracy)}"
            + (f" ({LOWER_BOUND}: {_per_scenario(summary, LOWER_BOUND, _accuracy, only=arm)})."
               if LOWER_BOUND in names else "."))
    for arm in [a for a in (LOWER_BOUND, UPPER_BOUND) if a in names]:
        coherence = _per_scenario(summary, arm, _diag("tile_coherence"))
        out.append(f"For reference, {arm}: fitted temperature {_per_scenario(summary, arm, _diag('temperature'))}; "
                   f"test loss {_per_scenario(summary, arm, _diag('test_loss'))}"
                   + (f"; tile coherence {coherence}" if coherence else "") + ".")
    return out
