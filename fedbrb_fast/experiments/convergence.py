"""Did an arm's accuracy curve flatten by the end of its budget? Judged from the recorded curve
(test accuracy per evaluated round, mean over seeds): its change across the last
CONVERGENCE_TAIL_FRACTION of the rounds, from the latest evaluation at or before round
(1 - CONVERGENCE_TAIL_FRACTION)·T to the last evaluated round T. The curve has flattened iff that
change is under CONVERGENCE_MAX_CHANGE_POINTS in either direction. A curve still rising says the
budget was too short for the arm, so its final number understates it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CONVERGENCE_TAIL_FRACTION = 0.2
CONVERGENCE_MAX_CHANGE_POINTS = 1.0
DEFAULT_CONVERGENCE_RULE = (
    "an arm's curve has flattened when its mean test accuracy over seeds changes by under 1 point across the last "
    "20% of the rounds (from the latest evaluation at or before round 0.8·T to the last, round T)")
_ROUNDING = 1e-9  # 0.8 * T computed in floats


@dataclass(frozen=True)
class Convergence:
    """The change of the mean accuracy (points, signed) from `from_round` to `to_round`; all None
    when the curve has no evaluation at or before (1 - tail)·T to compare with."""

    change_points: float | None
    from_round: int | None
    to_round: int | None

    @property
    def known(self) -> bool:
        return self.change_points is not None

    @property
    def flattened(self) -> bool:
        return self.change_points is not None and abs(self.change_points) < CONVERGENCE_MAX_CHANGE_POINTS


UNKNOWN = Convergence(None, None, None)


def judge_curve(curve: Mapping[str, Any]) -> Convergence:
    """The judgement of one mean curve ({"round": [...], "mean": [...]}, accuracies as fractions)."""
    points = [(int(r), m) for r, m in zip(curve["round"], curve["mean"], strict=True) if m is not None]
    if len(points) < 2:
        return UNKNOWN
    last_round, last_mean = points[-1]
    start = last_round * (1 - CONVERGENCE_TAIL_FRACTION) + _ROUNDING
    earlier = [(r, m) for r, m in points[:-1] if r <= start]
    if not earlier:
        return UNKNOWN
    from_round, from_mean = earlier[-1]
    return Convergence(100 * (last_mean - from_mean), from_round, last_round)


def judge_scenario(scenario: Mapping[str, Any]) -> dict[str, Convergence]:
    """Every arm of a scenario that has a curve, in the scenario's order."""
    return {arm: judge_curve(result["curve"]) for arm, result in scenario["results"].items() if "curve" in result}
