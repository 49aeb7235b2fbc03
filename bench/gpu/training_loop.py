"""The baseline of the training speed check: the reference engine's per-client loop, with the
data and the global model on the GPU (one client after another: gather its sub-model, train it
with autograd and torch.optim.SGD, keep its update on the GPU). Same plans, data order and
hyper-parameters as the batched engine."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from fedbrb_fast.engines import RoundContext
from fedbrb_fast.models.layout import extract
from fedbrb_fast.plans import ClientPlan
from fedbrb_fast.seeding import STREAM_TRAIN, torch_generator
from fedbrb_fast.training import train_client


def train_round_per_client(ctx: RoundContext, plans: Sequence[ClientPlan], global_params: Mapping[str, Tensor],
                           device: torch.device) -> list[dict[str, Tensor]]:
    """`global_params` and `ctx.data`'s training tensors already on `device`."""
    x_all, y_all = ctx.data.x_train, ctx.data.y_train
    updates = []
    for plan in plans:
        sub = extract(global_params, ctx.model.layout, [ix.to(device) for ix in plan.indices])
        rows = ctx.data.client_indices[plan.client].to(device)
        result = train_client(ctx.model, sub, x_all[rows], y_all[rows], beta=plan.width, hp=ctx.local,
                              generator=torch_generator(ctx.seed, STREAM_TRAIN, ctx.round_idx, plan.client))
        updates.append(result.params)
    return updates
