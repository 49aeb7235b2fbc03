"""The methods the simulator runs and FedBRB's block rule, shared by every stage that checks them
(config, plans, aggregation, the Flower strategies): one definition each."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

Method = Literal["fedbrb", "fedrolex", "heterofl", "fd", "fedavg", "fedavg_small"]
METHODS: tuple[Method, ...] = get_args(Method)


def uneven_groups(group_sizes: Sequence[int], num_blocks: int) -> list[int]:
    """The channel groups (by index) that do not split into `num_blocks` equal blocks
    (docs/algorithm.md#blocks: every group must, for FedBRB's K blocks)."""
    return [g for g, n in enumerate(group_sizes) if n % num_blocks]
