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
from .shear import Shear, chain_shear


@dataclass(frozen=True)
class ClientPlan:
    client: int
    width: float  # beta_i relative to the global model
    indices: tuple[Tensor, ...]  # per channel group
    roll: int | None = None  # FedBRB roll counter u


def rolling_block_start(u: int, c: int, num_blocks: int, schedule: str = "shear", e: int = 0) -> int:
    """b_g(u) = (u + c_g * floor(u / K) + e_g * floor(u / K^2)) mod K for a group's shear coefficients
    (c_g, e_g) (chains: c_g = g, e_g = 0; plans/shear.py); the diagonal ablation drops both shear terms."""
    if schedule == "diagonal":
        return u % num_blocks
    return (u + c * (u // num_blocks) + e * (u // num_blocks**2)) % num_blocks


def window(start: int, size: int, total: int) -> Tensor:
    """`size` consecutive channels from `start`, wrapping around at `total`."""
    return (torch.arange(size) + start) % total


def fedbrb_indices(
    u: int, width: float, group_sizes: Sequence[int], num_blocks: int, schedule: str,
    shear: Sequence[Shear] | None = None,
) -> tuple[Tensor, ...]:
    """Per group, the window of s = width*K blocks from block b_g(u); `shear`: per-group (c_g, e_g),
    None for the chain coefficients (right for chain layouts only)."""
    shear = _checked_shear(shear, len(group_sizes))
    s = round(width * num_blocks)
    out = []
    for n, (c, e) in zip(group_sizes, shear, strict=True):
        b = n // num_blocks
        out.append(window(rolling_block_start(u, c, num_blocks, schedule, e) * b, s * b, n))
    return tuple(out)


def _checked_shear(shear: Sequence[Shear] | None, num_groups: int) -> Sequence[Shear]:
    if shear is None:
        return chain_shear(num_groups)
    if len(shear) != num_groups:
        raise ValueError(f"shear: {len(shear)} (c_g, e_g) pairs for {num_groups} channel groups")
    return shear


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
    shear: Sequence[Shear] | None = None,
) -> list[ClientPlan]:
    """Plans for the sampled `clients` (with their widths) of round `round_idx`.

    `shear`: FedBRB's per-group coefficients (c_g, e_g), `shear_coefficients(layout)`; None gives the
    chain coefficients (c_g = g, e_g = 0), which are right for chain layouts only. Other methods ignore it.

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
            idx = fedbrb_indices(roll, width, group_sizes, num_blocks, schedule, shear)
        elif method == "fedrolex":
            idx = tuple(window(round_idx % n, channel_count(width, n), n) for n in group_sizes)
        elif method == "heterofl":
            idx = tuple(torch.arange(channel_count(width, n)) for n in group_sizes)
        else:  # fd: its own generator per (round, client), so engines agree whatever their order
            gen = torch_generator(seed, STREAM_PLAN, round_idx, client)
            idx = tuple(torch.randperm(n, generator=gen)[: channel_count(width, n)].sort().values for n in group_sizes)
        plans[pos] = ClientPlan(client=client, width=width, indices=idx, roll=roll)
    return plans  # type: ignore[return-value]
