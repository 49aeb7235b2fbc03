"""Interleaved timing: A B C A B C ..., so slow spells of a shared machine hit every contender alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Timings:
    seconds: list[float]  # one per repetition, in order
    phases: dict[str, float]  # phase seconds of the fastest repetition

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def interleaved(contenders: Mapping[str, Callable[[], dict[str, float]]], repeats: int) -> dict[str, Timings]:
    """Each contender once to warm up (allocator, caches, first-call costs), then `repeats` rounds of
    one call each, in the same order every round."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for run in contenders.values():
        run()
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    phases: dict[str, list[dict[str, float]]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, run in contenders.items():
            start = time.perf_counter()
            phase = run()
            seconds[name].append(time.perf_counter() - start)
            phases[name].append(phase)
    return {name: Timings(seconds[name], phases[name][seconds[name].index(min(seconds[name]))]) for name in contenders}
