"""Seeds: the vectorized derivation equals numpy's SeedSequence hash, client by client."""

import numpy as np
import pytest
import torch

from fedbrb_fast.seeding import STREAM_TRAIN, derive_seed, derive_seeds, torch_generator, torch_generators


@pytest.mark.parametrize("keys", [(), (7,), (2**32 - 1,)])
def test_derive_seeds_equals_derive_seed_per_key(keys):
    rng = np.random.default_rng(0)
    for _ in range(20):
        seed, stream = int(rng.integers(0, 2**32)), int(rng.integers(0, 8))
        last = np.concatenate([rng.integers(0, 2**32, 30), [0, 1, 2**32 - 1]])
        expected = [derive_seed(seed, stream, *keys, int(k)) for k in last]
        assert derive_seeds(seed, stream, *keys, last=last).tolist() == expected


def test_words_over_32_bits_and_long_keys_take_the_per_key_hash():
    last = np.array([0, 5, 2**40])
    for seed, keys in ((2**40, (1,)), (3, (1, 2, 3)), (3, (1,))):
        assert derive_seeds(seed, 2, *keys, last=last).tolist() == [derive_seed(seed, 2, *keys, int(k)) for k in last]


def test_torch_generators_draw_what_each_client_generator_draws():
    clients = np.array([4, 0, 19])
    for g, c in zip(torch_generators(5, STREAM_TRAIN, 3, last=clients), clients, strict=True):
        assert torch.equal(torch.randperm(40, generator=g),
                           torch.randperm(40, generator=torch_generator(5, STREAM_TRAIN, 3, int(c))))
