"""Local training of one client on its sub-model with autograd (docs/algorithm.md#local-training): the reference."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import TrainConfig
from ..models import ModelFamily

CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_ adds this to the norm


@dataclass(frozen=True)
class LocalTraining:
    """Hyper-parameters of one client's local work in one round."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    clip_norm: float | None = None

    @classmethod
    def of(cls, train: TrainConfig, lr: float) -> LocalTraining:
        """A round's hyper-parameters from the [train] section; `lr` is that round's (its schedule)."""
        return cls(train.local_epochs, train.batch_size, lr, train.momentum, train.weight_decay, train.clip_norm)


@dataclass(frozen=True)
class LocalResult:
    params: dict[str, Tensor]
    mean_loss: float
    steps: int


def epoch_orders(num_samples: int, epochs: int, generator: torch.Generator) -> list[Tensor]:
    """A fresh permutation of the client's samples per epoch: every engine draws its data order
    through this function, so all see the same batches."""
    return [torch.randperm(num_samples, generator=generator) for _ in range(epochs)]


def minibatches(num_samples: int, batch_size: int, epochs: int, generator: torch.Generator) -> list[Tensor]:
    """Sample positions of every local step; the last batch of an epoch may be short."""
    return [b for perm in epoch_orders(num_samples, epochs, generator) for b in perm.split(batch_size)]


def token_cross_entropy(logits: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Cross-entropy of logits [*, classes] against target ids [*]: one label per sample
    (classification) or one per token (a language model's next-token targets [b, L])."""
    return F.cross_entropy(logits.flatten(0, -2), target.flatten(), reduction=reduction)


def masked_logits(logits: Tensor, label_mask: Tensor | None) -> Tensor:
    """Label masking: classes absent from the client's data leave the softmax."""
    return logits if label_mask is None else logits.masked_fill(~label_mask, float("-inf"))


def train_client(model: ModelFamily, params: Mapping[str, Tensor], x: Tensor, y: Tensor, *, beta: float,
                 hp: LocalTraining, generator: torch.Generator, label_mask: Tensor | None = None) -> LocalResult:
    """SGD with momentum and weight decay (torch.optim.SGD semantics, fresh state), optional
    gradient clipping by the client's global norm; returns the trained sub-tensors."""
    trained = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    opt = torch.optim.SGD(list(trained.values()), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
    total, steps = 0.0, 0
    for batch in minibatches(len(y), hp.batch_size, hp.epochs, generator):
        logits = masked_logits(model.forward(trained, x[batch], beta=beta, train=True), label_mask)
        loss = token_cross_entropy(logits, y[batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if hp.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(list(trained.values()), hp.clip_norm)
        opt.step()
        total += float(loss.detach())
        steps += 1
    return LocalResult({k: v.detach() for k, v in trained.items()}, total / max(steps, 1), steps)
