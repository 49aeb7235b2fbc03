"""Which clients exist at which width, and which are sampled in each round."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..seeding import STREAM_SAMPLE, STREAM_WIDTHS, numpy_generator


def assign_widths(
    num_clients: int, widths: Sequence[float], proportions: Sequence[float] | None, seed: int
) -> list[float]:
    """Each client's fixed width: counts follow the proportions (largest remainder), and a seeded
    shuffle decides which client gets which width."""
    props = np.asarray(proportions if proportions is not None else [1.0] * len(widths), dtype=float)
    exact = props / props.sum() * num_clients
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: num_clients - counts.sum()]:
        counts[i] += 1
    pool = np.repeat(np.asarray(widths, dtype=float), counts)
    numpy_generator(seed, STREAM_WIDTHS).shuffle(pool)
    return [float(w) for w in pool]


def sample_clients(round_idx: int, num_clients: int, per_round: int, seed: int) -> list[int]:
    """`per_round` distinct clients, sorted by id, drawn from the round's own generator."""
    rng = numpy_generator(seed, STREAM_SAMPLE, round_idx)
    return sorted(int(c) for c in rng.choice(num_clients, size=per_round, replace=False))
