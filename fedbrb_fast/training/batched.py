"""Local training of many same-width clients in lock-step (SPEC §4), on stacked tensors.

Each client sees exactly the minibatches the reference loop would give it (same generator, same
`minibatches`); short batches are padded and masked, and a client whose data has run out is
frozen (no SGD step, no momentum change) while the others go on. Per-client SGD with momentum,
weight decay and clipping are batched tensor ops with torch.optim.SGD's semantics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models import Model
from ..seeding import STREAM_TRAIN, torch_generator
from .local import LocalTraining, minibatches

CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_ adds this to the norm


@dataclass(frozen=True)
class StepSchedule:
    """Data rows of every local step for n clients: rows [S, n, b] (indices into the shared
    training tensor), sample mask [S, n, b], and active [S, n] (the client has a batch)."""

    rows: Tensor
    mask: Tensor
    active: Tensor


def build_schedule(client_rows: Sequence[Tensor], batch_size: int, epochs: int, seed: int, round_idx: int,
                   clients: Sequence[int]) -> StepSchedule:
    """Minibatch order from each client's (seed, round, client) generator, padded to a table."""
    per_client = [minibatches(len(rows), batch_size, epochs, torch_generator(seed, STREAM_TRAIN, round_idx, c))
                  for rows, c in zip(client_rows, clients)]
    steps = max(len(b) for b in per_client)
    n = len(clients)
    rows = torch.zeros(steps, n, batch_size, dtype=torch.int64)
    mask = torch.zeros(steps, n, batch_size, dtype=torch.bool)
    for i, (batches, own_rows) in enumerate(zip(per_client, client_rows)):
        for s, pos in enumerate(batches):
            rows[s, i, : len(pos)] = own_rows[pos]
            mask[s, i, : len(pos)] = True
    return StepSchedule(rows=rows, mask=mask, active=mask.any(dim=2))


def train_stacked(model: Model, params: Mapping[str, Tensor], x_all: Tensor, y_all: Tensor, schedule: StepSchedule,
                  *, beta: float, hp: LocalTraining, label_mask: Tensor | None = None) -> tuple[dict[str, Tensor], Tensor]:
    """Train stacked client params [n, ...] in place of copies; returns (trained params, mean loss per client).

    `label_mask` [n, classes] bool removes absent classes from each client's softmax."""
    theta = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    momentum = {k: torch.zeros_like(v) for k, v in theta.items()}
    n = schedule.active.shape[1]
    loss_sum = torch.zeros(n, dtype=torch.float64)
    for s in range(schedule.rows.shape[0]):
        mask, active = schedule.mask[s], schedule.active[s]
        rows = schedule.rows[s]
        logits = model.forward_stacked(theta, x_all[rows], mask, beta=beta, train=True)
        if label_mask is not None:
            logits = logits.masked_fill(~label_mask.unsqueeze(1), float("-inf"))
        per_sample = F.cross_entropy(logits.flatten(0, 1), y_all[rows].flatten(), reduction="none").view(mask.shape)
        per_sample = torch.where(mask, per_sample, torch.zeros((), dtype=per_sample.dtype))
        per_client = per_sample.sum(dim=1) / mask.sum(dim=1).clamp_min(1)
        for t in theta.values():
            t.grad = None
        per_client.sum().backward()  # client i's gradient is that of its own mean loss
        with torch.no_grad():
            _sgd_step(theta, momentum, active, hp)
        loss_sum += per_client.detach().to(torch.float64)
    steps = schedule.active.sum(dim=0).clamp_min(1)
    return {k: v.detach() for k, v in theta.items()}, (loss_sum / steps).to(torch.float32)


def _sgd_step(theta: dict[str, Tensor], momentum: dict[str, Tensor], active: Tensor, hp: LocalTraining) -> None:
    """torch.optim.SGD per client (d = g + wd*p; buf = mu*buf + d; p -= lr*buf), only for
    clients with a batch this step; gradient clipping by each client's global norm first."""
    grads = {k: t.grad for k, t in theta.items()}
    if hp.clip_norm is not None:
        sq = sum(g.flatten(1).square().sum(dim=1) for g in grads.values())
        coef = (hp.clip_norm / (sq.sqrt() + CLIP_EPS)).clamp(max=1.0)
        grads = {k: g * _per_client(coef, g) for k, g in grads.items()}
    for k, p in theta.items():
        d = grads[k] + hp.weight_decay * p if hp.weight_decay else grads[k]
        on = _per_client(active, p)
        buf = momentum[k]
        new_buf = buf * hp.momentum + d if hp.momentum else d
        buf.copy_(torch.where(on, new_buf, buf))
        p.sub_(torch.where(on, buf, torch.zeros((), dtype=p.dtype)), alpha=hp.lr)


def _per_client(values: Tensor, like: Tensor) -> Tensor:
    return values.view(-1, *([1] * (like.dim() - 1)))
