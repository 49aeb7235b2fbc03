"""partition_indices: every method is a true partition; shard and Dirichlet skew behave as named."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedbrb_fast.data import partition_indices


def assert_partition(parts, n, num_clients):
    assert len(parts) == num_clients
    for p in parts:
        assert p.dtype == np.int64 and p.ndim == 1
        assert np.all(np.diff(p) > 0)  # sorted, no repeats
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(n))


@st.composite
def problems(draw):
    n = draw(st.integers(1, 300))
    labels = np.array(draw(st.lists(st.integers(0, 9), min_size=n, max_size=n)))
    num_clients = draw(st.integers(1, min(n, 20)))
    return labels, num_clients, draw(st.integers(0, 2**32))


@settings(max_examples=60, deadline=None)
@given(problems())
def test_iid_is_a_near_equal_partition(problem):
    labels, num_clients, seed = problem
    parts = partition_indices(labels, num_clients, "iid", rng=np.random.default_rng(seed))
    assert_partition(parts, len(labels), num_clients)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


@settings(max_examples=60, deadline=None)
@given(problems(), st.integers(1, 4))
def test_shards_is_a_partition(problem, shards_per_client):
    labels, num_clients, seed = problem
    rng = np.random.default_rng(seed)
    if num_clients * shards_per_client > len(labels):
        with pytest.raises(ValueError, match="shards_per_client"):
            partition_indices(labels, num_clients, "shards", rng=rng, shards_per_client=shards_per_client)
        return
    parts = partition_indices(labels, num_clients, "shards", rng=rng, shards_per_client=shards_per_client)
    assert_partition(parts, len(labels), num_clients)
    # Shards are near-equal, so clients' sizes differ by at most shards_per_client.
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= shards_per_client


@settings(max_examples=60, deadline=None)
@given(problems(), st.floats(0.05, 50))
def test_dirichlet_is_a_partition(problem, alpha):
    labels, num_clients, seed = problem
    rng = np.random.default_rng(seed)
    parts = partition_indices(labels, num_clients, "dirichlet", rng=rng, alpha=alpha, min_samples=0)
    assert_partition(parts, len(labels), num_clients)


@pytest.mark.parametrize("shards_per_client", [1, 2, 3])
def test_shards_aligned_with_classes_give_at_most_k_classes(shards_per_client):
    labels = np.repeat(np.arange(10), 60)  # 60 per class; shards of 600 / 60 = 10 never straddle classes
    rng = np.random.default_rng(0)
    parts = partition_indices(labels, 60 // shards_per_client, "shards", rng=rng, shards_per_client=shards_per_client)
    counts = [len(np.unique(labels[p])) for p in parts]
    assert max(counts) <= shards_per_client
    assert all(len(p) == 10 * shards_per_client for p in parts)
    assert_partition(parts, len(labels), len(parts))


def test_shards_shuffle_within_classes_and_depend_on_rng():
    labels = np.repeat(np.arange(2), 100)
    a = partition_indices(labels, 10, "shards", rng=np.random.default_rng(0), shards_per_client=2)
    b = partition_indices(labels, 10, "shards", rng=np.random.default_rng(0), shards_per_client=2)
    c = partition_indices(labels, 10, "shards", rng=np.random.default_rng(1), shards_per_client=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    # Labels are already sorted, so unshuffled shards would be the aligned runs 0-9, 10-19, ...;
    # a shard is instead a random subset of its class.
    assert any(len(np.unique(p // 10)) * 10 != len(p) for p in a)


def label_skew(parts, labels):
    """Mean total-variation distance between each client's label distribution and the global one."""
    classes = np.unique(labels)
    overall = np.array([np.mean(labels == c) for c in classes])
    dists = [np.array([np.mean(labels[p] == c) for c in classes]) for p in parts]
    return np.mean([0.5 * np.abs(d - overall).sum() for d in dists])


def test_dirichlet_small_alpha_is_more_skewed():
    labels = np.repeat(np.arange(10), 200)
    skew = {}
    for alpha in (0.05, 1.0, 100.0):
        draws = [
            partition_indices(labels, 20, "dirichlet", rng=np.random.default_rng(s), alpha=alpha) for s in range(5)
        ]
        skew[alpha] = np.mean([label_skew(parts, labels) for parts in draws])
    assert skew[0.05] > skew[1.0] > skew[100.0]
    assert skew[0.05] > 0.6 and skew[100.0] < 0.1
    iid = partition_indices(labels, 20, "iid", rng=np.random.default_rng(0))
    assert label_skew(iid, labels) < 0.15


def test_dirichlet_min_samples_is_enforced():
    labels = np.repeat(np.arange(10), 30)
    for seed in range(5):
        parts = partition_indices(labels, 30, "dirichlet", rng=np.random.default_rng(seed), alpha=0.5, min_samples=3)
        assert min(len(p) for p in parts) >= 3
        assert_partition(parts, len(labels), 30)


def test_dirichlet_gives_up_with_advice():
    labels = np.repeat(np.arange(10), 10)
    with pytest.raises(ValueError, match="larger alpha or fewer clients"):
        partition_indices(labels, 50, "dirichlet", rng=np.random.default_rng(0), alpha=0.01, min_samples=2)
    with pytest.raises(ValueError, match="min_samples"):
        partition_indices(labels, 60, "dirichlet", rng=np.random.default_rng(0), min_samples=2)


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((0, "iid"), {}, "num_clients"),
        ((-3, "shards"), {}, "num_clients"),
        ((101, "iid"), {}, "num_clients"),
        ((5, "dirichlet"), {"alpha": 0.0}, "alpha"),
        ((5, "dirichlet"), {"alpha": -1.0}, "alpha"),
        ((5, "dirichlet"), {"alpha": float("nan")}, "alpha"),
        ((5, "dirichlet"), {"alpha": float("inf")}, "alpha"),
        ((5, "dirichlet"), {"min_samples": -1}, "min_samples"),
        ((5, "shards"), {"shards_per_client": 0}, "shards_per_client"),
        ((60, "shards"), {"shards_per_client": 2}, "shards_per_client"),
        ((5, "powerlaw"), {}, "method 'powerlaw'.*iid, dirichlet, shards"),
    ],
)
def test_argument_errors(args, kwargs, match):
    labels = np.arange(100) % 10
    with pytest.raises(ValueError, match=match):
        partition_indices(labels, *args, rng=np.random.default_rng(0), **kwargs)


def test_labels_must_be_one_dimensional():
    with pytest.raises(ValueError, match="1-D"):
        partition_indices(np.zeros((10, 2), dtype=int), 2, "iid", rng=np.random.default_rng(0))
