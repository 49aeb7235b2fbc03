"""Mean ± std over seeds, for final numbers and for accuracy-vs-round curves."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def mean_std(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and sample standard deviation (n - 1; 0 for a single value) of the finite values.
    A run that ended without a number (None, NaN) counts in `missing`, never as a zero."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(finite)
    if not n:
        return {"mean": None, "std": None, "n": 0, "missing": len(values), "values": list(values)}
    mean = sum(finite) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n, "missing": len(values) - n, "values": list(values)}


def mean_curve(histories: Sequence[Sequence[Mapping[str, Any]]]) -> dict[str, list]:
    """Test accuracy against round over seeds: at every round each seed evaluated, its mean and std."""
    per_round: dict[int, list[float | None]] = {}
    for rows in histories:
        for row in rows:
            if row.get("accuracy") is not None:
                per_round.setdefault(int(row["round"]), []).append(row["accuracy"])
    rounds = sorted(r for r, accs in per_round.items() if len(accs) == len(histories))
    stats = [mean_std(per_round[r]) for r in rounds]
    return {"round": rounds, "mean": [s["mean"] for s in stats], "std": [s["std"] for s in stats]}


def arm_result(summaries: Sequence[Mapping[str, Any]],
               histories: Sequence[Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """One arm of one scenario over its seeds (run summaries and metric rows in seed order)."""
    return {
        "final_accuracy": mean_std([s.get("final_accuracy") for s in summaries]),
        "best_accuracy": mean_std([s.get("best_accuracy") for s in summaries]),
        "final_loss": mean_std([s.get("final_loss") for s in summaries]),
        "seconds": mean_std([s.get("seconds", {}).get("total") for s in summaries]),  # unrecorded: missing
        "curve": mean_curve(histories),
    }
