"""Per-round schedules for the learning rate and the broadcast weight lam
(docs/algorithm.md#local-training, #aggregation)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def lr_at(round_idx: int, *, lr: float, schedule: str, milestones: Sequence[int] = (), gamma: float = 0.1) -> float:
    """Constant, or multiplied by `gamma` at every milestone round already reached."""
    if schedule == "constant":
        return lr
    if schedule == "multistep":
        return lr * gamma ** sum(1 for m in milestones if round_idx >= m)
    raise ValueError(f"unknown lr schedule {schedule!r}")


def lam_at(round_idx: int, rounds: int, *, lam: float, schedule: str, lam_end: float = 0.0) -> float:
    """Broadcast weight in round `round_idx` (0-based) of `rounds`: constant, or decaying
    linearly / along a half cosine from `lam` in the first round to `lam_end` in the last."""
    if schedule == "constant":
        return lam
    progress = round_idx / (rounds - 1) if rounds > 1 else 1.0
    if schedule == "linear":
        return lam + (lam_end - lam) * progress
    if schedule == "cosine":
        return lam_end + (lam - lam_end) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lam schedule {schedule!r}")
