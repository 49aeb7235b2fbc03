"""Which channels each client gets in a round, for every method (docs/algorithm.md#extraction).

A plan is one int64 index tensor per channel group. The order of the indices is the order of the
client's channels; the same tensor slices a group's out-axis in one layer and its in-axis in the
next, so consecutive layers stay connected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..methods import METHODS
from ..seeding import STREAM_PLAN, torch_generator


@dataclass(frozen=True)
class ClientPlan:
    client: int
    width: float  # beta_i relative to the global model
    indices: tuple[Tensor, ...]  # per channel group
    roll: int | None = None  # FedBRB roll counter u


def rolling_block_start(u: int, group: int, num_blocks: int, schedule: str = "shear") -> int:
    """b_g(u) = (u + g * floor(u / K)) mod K; the diagonal ablation drops the shear term."""
    if schedule == "diagonal":
        return u % num_blocks
    return (u + group * (u // num_blocks)) % num_blocks


def window(start: int, size: int, total: int) -> Tensor:
    """`size` consecutive channels from `start`, wrapping around at `total`."""
    return (torch.arange(size) + start) % total


def fedbrb_indices(
    u: int, width: float, group_sizes: Sequence[int], num_blocks: int, schedule: str
) -> tuple[Tensor, ...]:
    s = round(width * num_blocks)
    out = []
    for g, n in enumerate(group_sizes):
        b = n // num_blocks
        out.append(window(rolling_block_start(u, g, num_blocks, schedule) * b, s * b, n))
    return tuple(out)


def channel_count(width: float, n: int) -> int:
    """ceil(beta * N), robust to beta * N landing a hair above an integer in floating point."""
    return math.ceil(round(width * n, 9))


def make_round_plans(
    method: str,
    round_idx: int,
    clients: Sequence[int],
    widths: Sequence[float],
    *,
    group_sizes: Sequence[int],
    num_blocks: int,
    seed: int,
    schedule: str = "shear",
) -> list[ClientPlan]:
    """Plans for the sampled `clients` (with their widths) of round `round_idx`.

    For fedavg and fedavg_small every client takes the whole global model (fedavg_small's global
    model is itself small; the model builder handles that).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    order = sorted(range(len(clients)), key=lambda j: clients[j])
    m = len(clients)
    plans: list[ClientPlan | None] = [None] * m
    for j, pos in enumerate(order):
        client, width = clients[pos], widths[pos]
        roll = None
        if method in ("fedavg", "fedavg_small"):
            width = 1.0
            idx = tuple(torch.arange(n) for n in group_sizes)
        elif method == "fedbrb":
            roll = round_idx * m + j
            idx = fedbrb_indices(roll, width, group_sizes, num_blocks, schedule)
        elif method == "fedrolex":
            idx = tuple(window(round_idx % n, channel_count(width, n), n) for n in group_sizes)
        elif method == "heterofl":
            idx = tuple(torch.arange(channel_count(width, n)) for n in group_sizes)
        else:  # fd: its own generator per (round, client), so engines agree whatever their order
            gen = torch_generator(seed, STREAM_PLAN, round_idx, client)
            idx = tuple(torch.randperm(n, generator=gen)[: channel_count(width, n)].sort().values for n in group_sizes)
        plans[pos] = ClientPlan(client=client, width=width, indices=idx, roll=roll)
    return plans  # type: ignore[return-value]
