"""FedProx's Synthetic(alpha, beta) data (Li et al., "Federated Optimization in Heterogeneous
Networks", MLSys 2020, section 5.1), generated per client.

Per client k: u_k ~ N(0, alpha), B_k ~ N(0, beta); W_k in R^{10x60} and b_k in R^10 have entries
~ N(u_k, 1); v_k in R^60 has entries ~ N(B_k, 1); x ~ N(v_k, Sigma) with Sigma diagonal,
Sigma_jj = j^-1.2; y = argmax(softmax(W_k x + b_k)). alpha is meant to set how much the clients'
models differ, beta how much their inputs differ. As in FedProx's released generator, alpha and beta are
the *standard deviation* of the normal (the paper's N(0, alpha) reads like a variance; the two
agree for the settings it reports, alpha, beta in {0, 1}, and differ for 0.5).
A consequence of that definition, kept as is: u_k shifts every class's logit by the same
u_k * (sum(x) + 1), so it never changes the argmax; client models differ through the N(., 1)
noise alone, and for a fixed seed the data do not depend on alpha at all (u_k is drawn at the
same stream position whatever alpha is).

Client sizes are int(lognormal(4, 2)) + 50 as in FedProx. The lognormal tail reaches tens of
thousands of samples, so this project clips sizes at `max_samples` (default 1000 in load_dataset)
to keep one tail client from dominating a simulation; pass None for FedProx's unclipped sizes.
The numbers differ from FedProx's files: it draws from numpy's global generator in another order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DIMENSION = 60
NUM_CLASSES = 10
MIN_SAMPLES = 50  # FedProx's "+ 50": every client has at least this many samples
TRAIN_FRACTION = 0.8  # FedProx's per-client train/test split


@dataclass(frozen=True, eq=False)
class SyntheticData:
    x_train: np.ndarray  # float64 [n_train, 60], clients' train parts concatenated in client order
    y_train: np.ndarray  # int64 [n_train]
    x_test: np.ndarray  # the clients' test parts, concatenated in client order
    y_test: np.ndarray
    client_train: tuple[np.ndarray, ...]  # client k's rows of x_train
    client_sizes: np.ndarray  # samples per client before the train/test split


def generate_synthetic(
    *, alpha: float, beta: float, num_clients: int, rng: np.random.Generator, max_samples: int | None
) -> SyntheticData:
    if not (np.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"synthetic_alpha must be a finite number >= 0, got {alpha}")
    if not (np.isfinite(beta) and beta >= 0):
        raise ValueError(f"synthetic_beta must be a finite number >= 0, got {beta}")
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if max_samples is not None and max_samples < MIN_SAMPLES:
        raise ValueError(
            f"synthetic_max_samples must be None or >= {MIN_SAMPLES} (FedProx's minimum), got {max_samples}"
        )

    sizes = rng.lognormal(4, 2, num_clients).astype(np.int64) + MIN_SAMPLES
    if max_samples is not None:
        sizes = np.minimum(sizes, max_samples)
    u = rng.normal(0.0, alpha, num_clients)
    b_mean = rng.normal(0.0, beta, num_clients)
    # Independent coordinates with variance j^-1.2 are exactly N(v_k, Sigma) for diagonal Sigma.
    x_std = np.arange(1, DIMENSION + 1, dtype=np.float64) ** -0.6

    xs_train, ys_train, xs_test, ys_test = [], [], [], []
    for k in range(num_clients):
        w = rng.normal(u[k], 1.0, (NUM_CLASSES, DIMENSION))
        b = rng.normal(u[k], 1.0, NUM_CLASSES)
        v = rng.normal(b_mean[k], 1.0, DIMENSION)
        x = v + x_std * rng.standard_normal((sizes[k], DIMENSION))
        # softmax is monotone, so its argmax is the argmax of the logits.
        y = np.argmax(x @ w.T + b, axis=1).astype(np.int64)
        # Samples are i.i.d. within a client, so taking the first 80% is a random split.
        n_train = int(TRAIN_FRACTION * sizes[k])
        xs_train.append(x[:n_train])
        ys_train.append(y[:n_train])
        xs_test.append(x[n_train:])
        ys_test.append(y[n_train:])

    offsets = np.cumsum([0] + [len(y) for y in ys_train])
    return SyntheticData(
        x_train=np.concatenate(xs_train),
        y_train=np.concatenate(ys_train),
        x_test=np.concatenate(xs_test),
        y_test=np.concatenate(ys_test),
        client_train=tuple(np.arange(offsets[k], offsets[k + 1], dtype=np.int64) for k in range(num_clients)),
        client_sizes=sizes,
    )
