"""Which channels each client gets in a round, for every method (docs/algorithm.md#extraction).

A plan is one int64 index tensor per channel group. The order of the indices is the order of the
client's channels; the same tensor slices a group's out-axis in one layer and its in-axis in the
next, so consecutive layers stay connected. A group of R_g segments (attention heads) gets its index
set over the d_g = N_g / R_g channels of one segment, applied inside every segment
(docs/algorithm.md#segments): the plan holds the expanded set of R_g * ceil(beta * d_g) channels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..methods import METHODS, describe_group, uneven_groups
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


def in_every_segment(index: Tensor, segments: int, segment_size: int) -> Tensor:
    """An index set over one segment's channels applied inside each of `segments` consecutive
    segments of `segment_size` channels: cat([r * d + index for r in range(R)])."""
    if segments == 1:
        return index
    return (torch.arange(segments).unsqueeze(1) * segment_size + index).flatten()


def fedbrb_indices(
    u: int, width: float, group_sizes: Sequence[int], num_blocks: int, schedule: str,
    shear: Sequence[Shear] | None = None, group_segments: Sequence[int] = (),
) -> tuple[Tensor, ...]:
    """Per group, the window of s = width*K blocks of B_g = d_g/K channels from block b_g(u), inside
    every segment; `shear`: per-group (c_g, e_g), None for the chain coefficients (right for chain
    layouts only); `group_segments`: R_g per group (empty: 1 each)."""
    shear = _checked_shear(shear, len(group_sizes))
    segments = checked_segments(group_segments, group_sizes)
    check_fedbrb_blocks(group_sizes, segments, num_blocks)
    s = round(width * num_blocks)
    out = []
    for n, r, (c, e) in zip(group_sizes, segments, shear, strict=True):
        d = n // r
        b = d // num_blocks
        out.append(in_every_segment(window(rolling_block_start(u, c, num_blocks, schedule, e) * b, s * b, d), r, d))
    return tuple(out)


def checked_segments(group_segments: Sequence[int], group_sizes: Sequence[int]) -> tuple[int, ...]:
    """R_g per group (1 each when none are given), each a positive divisor of its group's size."""
    if not group_segments:
        return (1,) * len(group_sizes)
    if len(group_segments) != len(group_sizes):
        raise ValueError(f"group_segments: {len(group_segments)} segment counts for {len(group_sizes)} channel groups")
    for g, (n, r) in enumerate(zip(group_sizes, group_segments, strict=True)):
        if r < 1 or n % r:
            raise ValueError(f"group_segments: channel group {g} of size {n} does not hold {r} equal segments")
    return tuple(group_segments)


def check_fedbrb_blocks(group_sizes: Sequence[int], segments: Sequence[int], num_blocks: int) -> None:
    """FedBRB cuts each segment of every group into K equal blocks: ValueError naming a group that does not."""
    for g in uneven_groups(group_sizes, num_blocks, segments):
        raise ValueError(f"fedbrb: {describe_group(g, group_sizes, segments)} does not split into "
                         f"K = {num_blocks} blocks")


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
    group_segments: Sequence[int] = (),
) -> list[ClientPlan]:
    """Plans for the sampled `clients` (with their widths) of round `round_idx`.

    `shear`: FedBRB's per-group coefficients (c_g, e_g), `shear_coefficients(layout)`; None gives the
    chain coefficients (c_g = g, e_g = 0), which are right for chain layouts only. Other methods ignore it.
    `group_segments`: R_g per group, `layout.group_segments` (empty: 1 each); every method picks its
    channels within one segment of d_g = N_g / R_g and applies them in every segment.

    For fedavg and fedavg_small every client takes the whole global model (fedavg_small's global
    model is itself small; the model builder handles that).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    segments = checked_segments(group_segments, group_sizes)
    if method == "fedbrb":
        check_fedbrb_blocks(group_sizes, segments, num_blocks)
    per_segment = [(n // r, r) for n, r in zip(group_sizes, segments, strict=True)]
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
            idx = fedbrb_indices(roll, width, group_sizes, num_blocks, schedule, shear, segments)
        elif method == "fedrolex":
            idx = tuple(in_every_segment(window(round_idx % d, channel_count(width, d), d), r, d)
                        for d, r in per_segment)
        elif method == "heterofl":
            idx = tuple(in_every_segment(torch.arange(channel_count(width, d)), r, d) for d, r in per_segment)
        else:  # fd: its own generator per (round, client), so engines agree whatever their order
            gen = torch_generator(seed, STREAM_PLAN, round_idx, client)
            idx = tuple(
                in_every_segment(torch.randperm(d, generator=gen)[: channel_count(width, d)].sort().values, r, d)
                for d, r in per_segment)
        plans[pos] = ClientPlan(client=client, width=width, indices=idx, roll=roll)
    return plans  # type: ignore[return-value]
