"""Splitting one training set among clients: i.i.d., Dirichlet label skew, or label shards.

Every method returns a partition of range(len(labels)): each index goes to exactly one client,
and each client's indices come back sorted (int64), so a partition is easy to compare and store.
"""

from __future__ import annotations

import numpy as np

METHODS = ("iid", "dirichlet", "shards")
# Dirichlet draws that leave a client below min_samples are redrawn; past this many tries the
# setting is hopeless in practice and the caller is told what to change.
DIRICHLET_MAX_TRIES = 100


def partition_indices(
    labels: np.ndarray,
    num_clients: int,
    method: str,
    *,
    rng: np.random.Generator,
    alpha: float = 0.3,
    shards_per_client: int = 2,
    min_samples: int = 2,
) -> list[np.ndarray]:
    """Client index arrays for `method`:

    - "iid": a random permutation cut into num_clients near-equal parts.
    - "dirichlet": label skew; for each class, proportions ~ Dir(alpha) over clients split that
      class's shuffled indices. Smaller alpha means more skew. Redrawn until every client holds at
      least `min_samples` indices.
    - "shards": McMahan et al.'s pathological non-IID split (as in HeteroFL/FedRolex): indices
      sorted by label (random order within a class) are cut into num_clients * shards_per_client
      shards and each client gets shards_per_client random ones, so it sees at most that many
      classes when shards do not straddle classes. Shards are near-equal (sizes differ by at most
      one) so that no index is dropped.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    n = len(labels)
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if num_clients > n:
        raise ValueError(f"num_clients ({num_clients}) exceeds the number of samples ({n})")
    if method == "iid":
        parts = np.array_split(rng.permutation(n), num_clients)
    elif method == "dirichlet":
        parts = _dirichlet(labels, num_clients, rng, alpha, min_samples)
    elif method == "shards":
        if shards_per_client < 1:
            raise ValueError(f"shards_per_client must be >= 1, got {shards_per_client}")
        num_shards = num_clients * shards_per_client
        if num_shards > n:
            raise ValueError(
                f"num_clients * shards_per_client ({num_shards}) exceeds the number of samples ({n})"
            )
        shuffled = rng.permutation(n)
        by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
        shards = np.array_split(by_label, num_shards)
        owners = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
        parts = [np.concatenate([shards[s] for s in row]) for row in owners]
    else:
        raise ValueError(f"unknown partition method {method!r}; valid methods: {', '.join(METHODS)}")
    return [np.sort(p).astype(np.int64) for p in parts]


def _dirichlet(
    labels: np.ndarray, num_clients: int, rng: np.random.Generator, alpha: float, min_samples: int
) -> list[np.ndarray]:
    if not (np.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha}")
    if min_samples < 0:
        raise ValueError(f"min_samples must be >= 0, got {min_samples}")
    if min_samples * num_clients > len(labels):
        raise ValueError(
            f"min_samples ({min_samples}) x num_clients ({num_clients}) exceeds the number of samples ({len(labels)})"
        )
    classes = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(DIRICHLET_MAX_TRIES):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for idx in classes:
            idx = rng.permutation(idx)
            shares = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(np.int64)
            for client, piece in enumerate(np.split(idx, cuts)):
                parts[client].append(piece)
        merged = [np.concatenate(p) for p in parts]
        if min(len(p) for p in merged) >= min_samples:
            return merged
    raise ValueError(
        f"dirichlet partition: no draw in {DIRICHLET_MAX_TRIES} tries gave every one of {num_clients} clients "
        f">= {min_samples} samples at alpha={alpha}; use a larger alpha or fewer clients"
    )
