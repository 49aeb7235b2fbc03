"""Deterministic seeds derived from (seed, stream, keys...).

Every random choice in a run (client sampling, FD plans, minibatch order, initialization) draws
from its own generator seeded here, so any engine sees the same randomness for the same client
and round, whatever order it processes clients in.
"""

from __future__ import annotations

import numpy as np
import torch

# Stream ids keep unrelated draws independent even for equal (round, client) keys.
STREAM_INIT = 1
STREAM_SAMPLE = 2
STREAM_PLAN = 3
STREAM_TRAIN = 4
STREAM_WIDTHS = 5
STREAM_FAULTS = 6


def derive_seed(seed: int, stream: int, *keys: int) -> int:
    """A 63-bit seed that depends on every argument (SeedSequence hashing)."""
    state = np.random.SeedSequence([int(seed), int(stream), *map(int, keys)]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def torch_generator(seed: int, stream: int, *keys: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, stream, *keys))


def numpy_generator(seed: int, stream: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, stream, *keys))
