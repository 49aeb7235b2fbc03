"""The paper's claims as verdicts computed from a suite summary (final accuracy, mean ± std).

(i)  FedBRB > FedRolex > HeteroFL in small-to-large, especially non-IID: holds in a scenario iff
     the means are in that order; "clear" iff every step exceeds the larger std of its pair.
(ii) FedBRB with only the smallest local models reaches or beats the baselines given larger ones:
     in a scenario with several widths, the `smallest_only` arm against every sub-model baseline
     (fedrolex, heterofl, fd) run with the scenario's widths. Beats: higher mean; reaches: lower
     by at most the larger std. Holds iff it reaches or beats every baseline.

Both are also counted over the scenarios with at least headroom.HEADROOM_MIN_POINTS of headroom
(fedavg − fedavg_small), where the large model matters; a scenario without fedavg or fedavg_small
has unknown headroom and is left out of that count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from .headroom import has_headroom, headroom_points

ORDERING = ("fedbrb", "fedrolex", "heterofl")
# Sub-model methods that compete with FedBRB under the small-to-large constraint.
SUBMODEL_BASELINES = ("fedrolex", "heterofl", "fd")


@dataclass(frozen=True)
class Pair:
    """Arm `a` against arm `b` in one scenario (final accuracy, fractions)."""

    a: str
    b: str
    mean_a: float
    mean_b: float
    noise: float  # the larger of the two standard deviations

    @property
    def diff(self) -> float:
        return self.mean_a - self.mean_b

    @property
    def beats(self) -> bool:
        return self.diff > 0

    @property
    def clearly_beats(self) -> bool:
        return self.diff > self.noise

    @property
    def reaches(self) -> bool:
        return self.diff >= -self.noise


@dataclass(frozen=True)
class Verdict:
    suite: str
    scenario: str
    non_iid: bool
    holds: bool
    clear: bool  # holds with every margin beyond one std
    pairs: tuple[Pair, ...]
    headroom: float | None = None  # the scenario's fedavg − fedavg_small in points; None: unknown


def pair(scenario: Mapping[str, Any], a: str, b: str) -> Pair | None:
    """None when either arm has no final accuracy in this scenario."""
    res = scenario["results"]
    if a not in res or b not in res:
        return None
    fa, fb = res[a]["final_accuracy"], res[b]["final_accuracy"]
    if fa["mean"] is None or fb["mean"] is None:
        return None
    return Pair(a, b, fa["mean"], fb["mean"], max(fa["std"], fb["std"]))


def is_non_iid(scenario: Mapping[str, Any]) -> bool:
    return scenario["setup"]["partition"] != "iid"


def ordering_verdicts(summary: Mapping[str, Any], order: Sequence[str] = ORDERING) -> list[Verdict]:
    """Claim (i) in every scenario where all arms of `order` have results."""
    out = []
    for scenario in summary["scenarios"]:
        found = [pair(scenario, a, b) for a, b in pairwise(order)]
        pairs = [p for p in found if p is not None]
        if len(pairs) < len(found):
            continue
        out.append(Verdict(summary["suite"], scenario["name"], is_non_iid(scenario), all(p.beats for p in pairs),
                           all(p.clearly_beats for p in pairs), tuple(pairs), headroom_points(scenario)))
    return out


def smallest_only_verdicts(summary: Mapping[str, Any]) -> list[Verdict]:
    """Claim (ii) in every scenario where the suite's `smallest_only` arm ran."""
    arm = summary.get("roles", {}).get("smallest_only")
    out = []
    for scenario in summary["scenarios"] if arm else ():
        pairs = [p for b in SUBMODEL_BASELINES if (p := pair(scenario, arm, b)) is not None]
        if not pairs:
            continue
        out.append(Verdict(summary["suite"], scenario["name"], is_non_iid(scenario), all(p.reaches for p in pairs),
                           all(p.clearly_beats for p in pairs), tuple(pairs), headroom_points(scenario)))
    return out


def with_headroom(verdicts: Sequence[Verdict]) -> list[Verdict]:
    """The verdicts of scenarios with at least HEADROOM_MIN_POINTS of headroom."""
    return [v for v in verdicts if has_headroom(v.headroom)]


def unknown_headroom(verdicts: Sequence[Verdict]) -> list[Verdict]:
    """The verdicts of scenarios without fedavg or fedavg_small: left out of the headroom count."""
    return [v for v in verdicts if v.headroom is None]


@dataclass(frozen=True)
class Tally:
    scenarios: int
    holds: int
    clear: int
    non_iid: int
    non_iid_holds: int

    @property
    def iid(self) -> int:
        return self.scenarios - self.non_iid

    @property
    def iid_holds(self) -> int:
        return self.holds - self.non_iid_holds


def tally(verdicts: Sequence[Verdict]) -> Tally:
    return Tally(len(verdicts), sum(v.holds for v in verdicts), sum(v.clear for v in verdicts),
                 sum(v.non_iid for v in verdicts), sum(v.holds and v.non_iid for v in verdicts))


def overall(verdicts: Sequence[Verdict]) -> str:
    """'holds' (every scenario), 'does not hold' (none), 'holds in some scenarios', or 'untested'."""
    t = tally(verdicts)
    if not t.scenarios:
        return "untested"
    if t.holds == t.scenarios:
        return "holds"
    return "does not hold" if t.holds == 0 else "holds in some scenarios"


def first_margin(verdicts: Sequence[Verdict], non_iid: bool) -> float | None:
    """Mean margin of the first pair (claim (i): fedbrb - fedrolex) over IID or non-IID scenarios:
    "especially non-IID" predicts the non-IID margin is the larger."""
    margins = [v.pairs[0].diff for v in verdicts if v.non_iid == non_iid]
    return sum(margins) / len(margins) if margins else None
