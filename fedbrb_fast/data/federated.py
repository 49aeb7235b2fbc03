"""The federated view of a dataset: the training tensors stored once, plus one index tensor per
client. Engines gather a client's minibatches from these indices, so no per-client copies or
DataLoaders exist and every engine reads the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedbrb_fast.config import TOKEN_PARTITIONS
from fedbrb_fast.data.datasets import Dataset
from fedbrb_fast.data.partition import METHODS, partition_indices

PARTITIONS = ("natural", *METHODS)

# Key that separates the partition's random stream from the dataset split's (seeded by `seed`
# alone) and from fedbrb_fast.seeding's stream ids.
_PARTITION_STREAM = 101


@dataclass(frozen=True, eq=False)  # eq=False: comparing tensors elementwise has no single truth value
class FederatedData:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    client_indices: tuple[torch.Tensor, ...]  # int64 indices into x_train, one tensor per client
    vocabulary: str | None = None  # token data (fedbrb_fast.data.datasets.Dataset): id i is vocabulary[i]

    def __post_init__(self) -> None:
        n = len(self.x_train)
        for k, idx in enumerate(self.client_indices):
            if idx.dtype != torch.int64 or idx.dim() != 1:
                raise ValueError(f"client {k}: indices must be a 1-D int64 tensor, got {idx.dtype} {tuple(idx.shape)}")
            if idx.numel() and (idx.min() < 0 or idx.max() >= n):
                raise ValueError(f"client {k}: indices must lie in [0, {n}), got [{idx.min()}, {idx.max()}]")

    @property
    def num_clients(self) -> int:
        return len(self.client_indices)

    def num_samples(self, client: int) -> int:
        return len(self._indices(client))

    def client_data(self, client: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) of one client's training samples, gathered (a copy)."""
        idx = self._indices(client)
        return self.x_train[idx], self.y_train[idx]

    def client_labels(self, client: int) -> torch.Tensor:
        """Sorted distinct labels in one client's training data (token data: its distinct target ids)."""
        return torch.unique(self.y_train[self._indices(client)])

    def _indices(self, client: int) -> torch.Tensor:
        # Negative ids would silently wrap around in tuple indexing; a client id is never negative.
        if not 0 <= client < self.num_clients:
            raise IndexError(f"client {client} out of range for {self.num_clients} clients")
        return self.client_indices[client]


def make_federated(
    dataset: Dataset,
    *,
    num_clients: int,
    partition: str,
    seed: int,
    alpha: float = 0.3,
    shards_per_client: int = 2,
) -> FederatedData:
    """Split `dataset`'s training set among `num_clients` clients.

    partition: "natural" keeps the clients the dataset defines (synthetic, shakespeare); "iid",
    "dirichlet" (label skew with concentration `alpha`) or "shards" (`shards_per_client` label
    shards each) partition the pooled training set, also for a dataset with natural clients.
    Token data (a dataset with a vocabulary) takes "natural" or "iid" only.
    """
    if partition not in PARTITIONS:
        raise ValueError(f"unknown partition {partition!r}; valid partitions: {', '.join(PARTITIONS)}")
    tokens = dataset.vocabulary is not None
    if tokens and partition not in TOKEN_PARTITIONS:
        raise ValueError(f"partition {partition!r} splits by label, and {dataset.name!r} is token data without one "
                         f"label per sample; use {' or '.join(repr(p) for p in TOKEN_PARTITIONS)}")
    if partition == "natural":
        if dataset.natural_clients is None:
            raise ValueError(f"partition 'natural' needs a dataset that defines its clients; {dataset.name!r} does not")
        if num_clients != len(dataset.natural_clients):
            raise ValueError(
                f"num_clients ({num_clients}) differs from the {len(dataset.natural_clients)} clients "
                f"that {dataset.name!r} was generated with"
            )
        indices = dataset.natural_clients
    else:
        rng = np.random.default_rng(np.random.SeedSequence([seed, _PARTITION_STREAM]))
        # "iid" reads only the number of samples from the labels, so one per token sequence will do.
        labels = dataset.y_train[:, 0] if tokens else dataset.y_train
        parts = partition_indices(
            labels.numpy(), num_clients, partition, rng=rng, alpha=alpha, shards_per_client=shards_per_client
        )
        indices = tuple(torch.from_numpy(p) for p in parts)
    return FederatedData(
        x_train=dataset.x_train,
        y_train=dataset.y_train,
        x_test=dataset.x_test,
        y_test=dataset.y_test,
        num_classes=dataset.num_classes,
        input_shape=dataset.input_shape,
        client_indices=tuple(indices),
        vocabulary=dataset.vocabulary,
    )
