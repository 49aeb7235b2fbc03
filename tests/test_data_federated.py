"""FederatedData and make_federated: one copy of the data, per-client index views."""

import numpy as np
import pytest
import torch

from fedbrb_fast.data import Dataset, FederatedData, load_dataset, make_federated


def tiny_dataset(n=60, natural=None):
    x = torch.arange(n * 3, dtype=torch.float32).reshape(n, 3)
    y = torch.arange(n, dtype=torch.int64) % 4
    return Dataset("tiny", x, y, x[:5].clone(), y[:5].clone(), 4, (3,), natural_clients=natural)


@pytest.fixture(scope="module")
def synthetic():
    return load_dataset("synthetic", seed=0, num_clients=12, synthetic_max_samples=200)


@pytest.mark.parametrize("partition", ["iid", "dirichlet", "shards"])
def test_client_views_match_indexing(partition):
    ds = tiny_dataset()
    fd = make_federated(ds, num_clients=6, partition=partition, seed=0, alpha=5.0)
    assert fd.num_clients == 6
    assert fd.x_train is ds.x_train and fd.y_train is ds.y_train and fd.x_test is ds.x_test  # stored once
    assert (fd.num_classes, fd.input_shape) == (4, (3,))
    seen = []
    for k in range(fd.num_clients):
        idx = fd.client_indices[k]
        assert idx.dtype == torch.int64
        x, y = fd.client_data(k)
        assert torch.equal(x, ds.x_train[idx]) and torch.equal(y, ds.y_train[idx])
        assert fd.num_samples(k) == len(idx) == len(x)
        assert fd.client_labels(k).tolist() == sorted(set(ds.y_train[idx].tolist()))
        seen += idx.tolist()
    assert sorted(seen) == list(range(len(ds.x_train)))


def test_shards_client_labels():
    ds = tiny_dataset(n=80)  # labels 0..3, 20 each; 8 shards of 10 never straddle classes
    fd = make_federated(ds, num_clients=4, partition="shards", seed=3, shards_per_client=2)
    for k in range(4):
        labels = fd.client_labels(k)
        assert 1 <= len(labels) <= 2 and torch.all(labels[1:] > labels[:-1])
        assert set(labels.tolist()) == set(fd.client_data(k)[1].tolist())


def test_partition_is_seeded():
    ds = tiny_dataset()
    a, b, c = (make_federated(ds, num_clients=5, partition="iid", seed=s) for s in (0, 0, 1))
    assert all(torch.equal(x, y) for x, y in zip(a.client_indices, b.client_indices, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a.client_indices, c.client_indices, strict=True))


def test_natural_partition_uses_the_dataset_clients(synthetic):
    fd = make_federated(synthetic, num_clients=12, partition="natural", seed=0)
    assert fd.num_clients == 12
    for k, idx in enumerate(synthetic.natural_clients):
        assert torch.equal(fd.client_indices[k], idx)
        assert fd.num_samples(k) == len(idx)
    with pytest.raises(ValueError, match="num_clients \\(10\\) differs from the 12 clients"):
        make_federated(synthetic, num_clients=10, partition="natural", seed=0)
    with pytest.raises(ValueError, match="'tiny' does not"):
        make_federated(tiny_dataset(), num_clients=3, partition="natural", seed=0)


def test_natural_dataset_can_be_repartitioned(synthetic):
    fd = make_federated(synthetic, num_clients=5, partition="dirichlet", seed=0, alpha=1.0)
    assert fd.num_clients == 5
    pooled = torch.sort(torch.cat(fd.client_indices)).values
    assert torch.equal(pooled, torch.arange(len(synthetic.x_train)))


def test_unknown_partition_and_client_ids():
    ds = tiny_dataset()
    with pytest.raises(ValueError, match="'random'.*natural, iid, dirichlet, shards"):
        make_federated(ds, num_clients=3, partition="random", seed=0)
    fd = make_federated(ds, num_clients=3, partition="iid", seed=0)
    for bad in (-1, 3):
        with pytest.raises(IndexError, match="client"):
            fd.client_data(bad)
        with pytest.raises(IndexError):
            fd.num_samples(bad)


def test_federated_data_rejects_bad_indices():
    ds = tiny_dataset(n=10)
    fields = dict(
        x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test, y_test=ds.y_test, num_classes=4, input_shape=(3,)
    )
    with pytest.raises(ValueError, match="client 1.*\\[0, 10\\)"):
        FederatedData(**fields, client_indices=(torch.arange(5), torch.tensor([5, 10])))
    with pytest.raises(ValueError, match="int64"):
        FederatedData(**fields, client_indices=(torch.arange(5, dtype=torch.int32),))
    empty = FederatedData(**fields, client_indices=(torch.arange(10), torch.zeros(0, dtype=torch.int64)))
    assert empty.num_samples(1) == 0 and empty.client_labels(1).numel() == 0
    assert np.array_equal(empty.client_data(0)[1].numpy(), ds.y_train.numpy())
