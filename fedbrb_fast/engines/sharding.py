"""Which rank trains which clients: a deterministic, load-balanced split of a round's plans.

Every rank computes the same split from the same plans and costs (nothing random, no
communication), so the shards are disjoint and together cover the round.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence

from ..models.layout import ModelLayout
from ..plans import ClientPlan


def shard_plans(plans: Sequence[ClientPlan], world_size: int, cost: Mapping[int, float]) -> list[list[ClientPlan]]:
    """Greedy longest-processing-time split: clients by decreasing `cost[client]` (ties by id),
    each to the least-loaded rank so far (ties: the lowest rank). Each shard keeps that order."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    shards: list[list[ClientPlan]] = [[] for _ in range(world_size)]
    loads = [(0.0, rank) for rank in range(world_size)]  # a heap of (load, rank)
    for plan in sorted(plans, key=lambda p: (-cost[p.client], p.client)):
        load, rank = heapq.heappop(loads)
        shards[rank].append(plan)
        heapq.heappush(loads, (load + cost[plan.client], rank))
    return shards


def client_costs(plans: Sequence[ClientPlan], steps: Mapping[int, int], layout: ModelLayout) -> dict[int, float]:
    """Training cost of each client, up to a constant: local steps x sub-model parameters (a
    step's multiply-adds per sample grow with them; the batched engine skips clients whose steps
    are done)."""
    return {p.client: steps[p.client] * sum(math.prod(layout.sub_shape(s, p.indices)) for s in layout.params)
            for p in plans}
