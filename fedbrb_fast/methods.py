"""The methods the simulator runs and FedBRB's block rule, shared by every stage that checks them
(config, plans, aggregation, the Flower strategies): one definition each."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

Method = Literal["fedbrb", "fedrolex", "heterofl", "fd", "fedavg", "fedavg_small"]
METHODS: tuple[Method, ...] = get_args(Method)


def uneven_groups(group_sizes: Sequence[int], num_blocks: int, group_segments: Sequence[int] = ()) -> list[int]:
    """The channel groups (by index) that do not split into `num_blocks` equal blocks
    (docs/algorithm.md#blocks: every group must, for FedBRB's K blocks). A group of R_g segments
    (`group_segments`, empty: 1 each) splits each segment's d_g = N_g / R_g channels (docs/algorithm.md#segments)."""
    segments = group_segments or (1,) * len(group_sizes)
    return [g for g, (n, r) in enumerate(zip(group_sizes, segments, strict=True)) if (n // r) % num_blocks]


def describe_group(group: int, group_sizes: Sequence[int], group_segments: Sequence[int] = ()) -> str:
    """'channel group g of size N', with its segments where it has more than one."""
    r = group_segments[group] if group_segments else 1
    n = group_sizes[group]
    segments = f" ({r} segments of {n // r})" if r > 1 else ""
    return f"channel group {group} of size {n}{segments}"
