"""An aggregation rule and what applying it returns (docs/algorithm.md#aggregation)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import Tensor

from ..methods import describe_group, uneven_groups
from .errors import AggregationError


@dataclass(frozen=True)
class AggregationRule:
    """`overlap`: average over the clients covering each element. `broadcast`: FedBRB's weighted
    broadcast with weight `lam` over a tile layout of `num_blocks` blocks per sliced axis."""

    kind: str = "overlap"
    lam: float = 0.0
    num_blocks: int = 1

    def __post_init__(self) -> None:
        if self.kind not in ("overlap", "broadcast"):
            raise AggregationError(f"unknown aggregation rule {self.kind!r}; expected 'overlap' or 'broadcast'")
        if not 0.0 <= self.lam <= 1.0:
            raise AggregationError(f"lam must lie in [0, 1], got {self.lam}")
        if self.num_blocks < 1:
            raise AggregationError(f"num_blocks must be >= 1, got {self.num_blocks}")

    def check_groups(self, group_sizes: Sequence[int], group_segments: Sequence[int] = ()) -> None:
        """The broadcast rule tiles every channel group into `num_blocks` equal blocks: inside each
        segment of a group with segments (`group_segments`, docs/algorithm.md#segments)."""
        if self.kind != "broadcast":
            return
        for g in uneven_groups(group_sizes, self.num_blocks, group_segments):
            per_segment = " per segment" if group_segments and group_segments[g] > 1 else ""
            raise AggregationError(f"{describe_group(g, group_sizes, group_segments)} does not split into "
                                   f"{self.num_blocks} blocks{per_segment}")


@dataclass(frozen=True)
class AggregationResult:
    params: dict[str, Tensor]  # the new global model (fresh tensors, or numpy arrays for numpy inputs)
    included: list[int]
    excluded: dict[int, str] = field(default_factory=dict)  # client -> why it was left out
    backend: str = "reference"  # which backend computed it (what "auto" picked)


def own_update_share(lam: float, num_tiles: int) -> float:
    """The share of its own update a tile keeps under weighted broadcast with weight `lam`, when
    each of a tensor's `num_tiles` positions is trained once with equal weights (docs/algorithm.md#aggregation):
    `(1 - lam) / ((1 - lam) + lam * T)`; the rest is the broadcast mean. A hidden-to-hidden
    weight at K blocks per axis has T = K^2 (K = 8, lam = 0.5: 1/65)."""
    if not 0.0 <= lam <= 1.0:
        raise AggregationError(f"lam must lie in [0, 1], got {lam}")
    if num_tiles < 1:
        raise AggregationError(f"num_tiles must be >= 1, got {num_tiles}")
    return (1.0 - lam) / ((1.0 - lam) + lam * num_tiles)  # the denominator is >= 1 for T >= 1


def rule_for_method(method: str, lam: float, num_blocks: int) -> AggregationRule:
    """FedBRB aggregates by weighted broadcast; every baseline by overlap averaging."""
    if method == "fedbrb":
        return AggregationRule("broadcast", lam=lam, num_blocks=num_blocks)
    return AggregationRule("overlap")
