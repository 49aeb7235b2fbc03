"""Headroom: how much the large global model matters in a scenario, `fedavg` − `fedavg_small`
(the full model on every client against everyone training the small one), in percentage points.
Where it is small, no small-to-large method has anything to gain over the small model, so the
claims are also counted over the scenarios with at least HEADROOM_MIN_POINTS of headroom."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

UPPER_BOUND, LOWER_BOUND = "fedavg", "fedavg_small"
HEADROOM_MIN_POINTS = 10.0
_ROUNDING = 1e-9  # 0.6 - 0.5 is 9.999999999999998 points in floats; it is 10


def headroom_points(scenario: Mapping[str, Any]) -> float | None:
    """Final mean accuracy of fedavg minus fedavg_small, in points; None (unknown) when either
    arm did not run in the scenario or ended without a number."""
    means = []
    for arm in (UPPER_BOUND, LOWER_BOUND):
        result = scenario["results"].get(arm)
        mean = result["final_accuracy"]["mean"] if result else None
        if mean is None:
            return None
        means.append(mean)
    return 100 * (means[0] - means[1])


def has_headroom(points: float | None) -> bool:
    """At least HEADROOM_MIN_POINTS; unknown headroom is not."""
    return points is not None and points >= HEADROOM_MIN_POINTS - _ROUNDING
