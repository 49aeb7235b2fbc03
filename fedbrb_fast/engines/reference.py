"""The reference engine: one client at a time, autograd on its own sub-model (docs/algorithm.md#local-training).

Every fast engine is tested against this one on the same plans and data order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

from ..aggregation import ClientUpdate
from ..models.layout import extract
from ..plans import ClientPlan
from ..profiling import PhaseTimer
from ..seeding import STREAM_TRAIN, torch_generator
from ..training import train_client
from .base import Engine
from .context import RoundContext, TrainedRound


class ReferenceEngine(Engine):
    name = "reference"

    def train_round(self, ctx: RoundContext, plans: Sequence[ClientPlan], global_params: Mapping[str, Tensor],
                    timer: PhaseTimer) -> TrainedRound:
        updates, losses = [], {}
        for plan in plans:
            with timer.phase("gather"):
                sub = extract(global_params, ctx.model.layout, plan.indices)
                x, y = ctx.data.client_data(plan.client)
            with timer.phase("train"):
                result = train_client(
                    ctx.model, sub, x, y, beta=plan.width, hp=ctx.local, label_mask=ctx.label_mask(plan.client),
                    generator=torch_generator(ctx.seed, STREAM_TRAIN, ctx.round_idx, plan.client),
                )
            losses[plan.client] = result.mean_loss
            updates.append(ClientUpdate(client=plan.client, weight=ctx.client_weight(plan.client), indices=plan.indices,
                                        params=result.params, masks=ctx.aggregation_masks(plan.client)))
        return TrainedRound(updates=updates, train_losses=losses)

