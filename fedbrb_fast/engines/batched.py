"""The batched engine: a round's clients grouped by width and trained together as stacked
tensors (batched GEMMs for linear layers, grouped convolutions for conv layers).

Same inputs and randomness as the reference engine; memory is bounded by training at most
`max_clients_per_step` clients at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from ..aggregation import ClientBatch
from ..models.stacked import gather_stacked
from ..plans import ClientPlan
from ..profiling import PhaseTimer
from ..training.batched import build_schedule, local_steps, train_stacked
from .context import RoundContext, TrainedRound


def width_chunks(plans: Sequence[ClientPlan], max_clients: int, steps: Mapping[int, int]) -> list[list[ClientPlan]]:
    """Plans grouped by width (equal sub-model shapes), ordered by decreasing local step count
    `steps[client]` (so a chunk's clients idle from the end), each group cut into chunks."""
    by_width: dict[tuple[int, ...], list[ClientPlan]] = {}
    for p in sorted(plans, key=lambda p: (-steps[p.client], p.client)):
        by_width.setdefault(tuple(len(ix) for ix in p.indices), []).append(p)
    return [group[i:i + max_clients] for group in by_width.values() for i in range(0, len(group), max_clients)]


class BatchedEngine:
    name = "batched"

    def __init__(self, max_clients_per_step: int = 256) -> None:
        if max_clients_per_step < 1:
            raise ValueError(f"max_clients_per_step must be >= 1, got {max_clients_per_step}")
        self.max_clients_per_step = max_clients_per_step

    def train_round(self, ctx: RoundContext, plans: Sequence[ClientPlan], global_params: Mapping[str, Tensor],
                    timer: PhaseTimer) -> TrainedRound:
        batches, losses = [], {}
        steps = {p.client: local_steps(ctx.data.num_samples(p.client), ctx.local.batch_size, ctx.local.epochs)
                 for p in plans}
        for chunk in width_chunks(plans, self.max_clients_per_step, steps):
            clients = tuple(p.client for p in chunk)
            with timer.phase("gather"):
                indices = tuple(torch.stack([p.indices[g] for p in chunk]) for g in range(len(chunk[0].indices)))
                stacked = {s.name: gather_stacked(global_params[s.name], s, indices) for s in ctx.model.layout.params}
                schedule = build_schedule([ctx.data.client_indices[c] for c in clients], ctx.local.batch_size,
                                          ctx.local.epochs, ctx.seed, ctx.round_idx, clients)
                label_mask = (torch.stack([ctx.label_mask(c) for c in clients]) if ctx.label_masking else None)
            with timer.phase("train"):
                trained, mean_loss = train_stacked(ctx.model, stacked, ctx.data.x_train, ctx.data.y_train, schedule,
                                                   beta=chunk[0].width, hp=ctx.local, label_mask=label_mask)
            losses.update(zip(clients, mean_loss.tolist()))
            batches.append(ClientBatch(
                clients=clients,
                weights=torch.tensor([ctx.client_weight(c) for c in clients], dtype=torch.float64),
                indices=indices,
                params=trained,
                masks=_stack_masks([ctx.aggregation_masks(c) for c in clients]),
            ))
        return TrainedRound(updates=batches, train_losses=losses)


def _stack_masks(masks: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    return {k: torch.stack([m[k] for m in masks]) for k in masks[0]} if masks and masks[0] else {}
