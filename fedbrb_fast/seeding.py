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


# numpy's SeedSequence constants (numpy/random/bit_generator.pyx), for the vectorized `derive_seeds`.
_POOL = 4
_INIT_A, _MULT_A, _INIT_B, _MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R = 0xCA01F9DD, 0x4973F715
_WORD = 1 << 32


def derive_seeds(seed: int, stream: int, *keys: int, last: np.ndarray) -> np.ndarray:
    """`derive_seed(seed, stream, *keys, k)` for every k in `last` at once (int64 [n]), as numpy's
    SeedSequence computes it (one hash per client costs 30-50 us in Python; here the n hashes run
    as array arithmetic). Falls back to `derive_seed` when an entropy word would not fit 32 bits."""
    last = np.asarray(last, dtype=np.int64)
    words = [int(seed), int(stream), *map(int, keys)]
    if len(words) + 1 > _POOL or any(not 0 <= w < _WORD for w in words) or (last < 0).any() or (last >= _WORD).any():
        return np.array([derive_seed(seed, stream, *keys, int(k)) for k in last], dtype=np.int64)
    with np.errstate(over="ignore"):
        entropy = [np.full(last.shape, w, np.uint32) for w in words] + [last.astype(np.uint32)]
        entropy += [np.zeros(last.shape, np.uint32)] * (_POOL - len(entropy))
        hash_a = [np.uint32(_INIT_A)]

        def hashmix(value: np.ndarray) -> np.ndarray:
            value = value ^ hash_a[0]
            hash_a[0] = np.uint32((int(hash_a[0]) * _MULT_A) % _WORD)
            value = value * hash_a[0]
            return value ^ (value >> np.uint32(16))

        def mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
            result = np.asarray(np.uint32(_MIX_L) * x - np.uint32(_MIX_R) * y, dtype=np.uint32)
            return result ^ (result >> np.uint32(16))

        pool = [hashmix(word) for word in entropy]
        for src in range(_POOL):
            for dst in range(_POOL):
                if src != dst:
                    pool[dst] = mix(pool[dst], hashmix(pool[src]))
        state, hash_b = [], _INIT_B
        for word in pool[:2]:
            value = word ^ np.uint32(hash_b)
            hash_b = (hash_b * _MULT_B) % _WORD
            value = value * np.uint32(hash_b)
            state.append(value ^ (value >> np.uint32(16)))
    return ((state[0].astype(np.int64) << 31) ^ state[1].astype(np.int64)) & ((1 << 63) - 1)


def torch_generator(seed: int, stream: int, *keys: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, stream, *keys))


def torch_generators(seed: int, stream: int, *keys: int, last: np.ndarray) -> list[torch.Generator]:
    """`torch_generator(seed, stream, *keys, k)` for every k in `last`."""
    return [torch.Generator().manual_seed(int(s)) for s in derive_seeds(seed, stream, *keys, last=last)]


def numpy_generator(seed: int, stream: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, stream, *keys))
