"""Global-model test accuracy and loss (docs/algorithm.md#evaluation)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ..models import ModelFamily
from .local import token_cross_entropy


@torch.no_grad()
def evaluate(model: ModelFamily, params: Mapping[str, Tensor], x: Tensor, y: Tensor,
             batch_size: int) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) per label (per sample, or per token for next-token
    targets [n, L]) over fixed, in-order batches; static BatchNorm uses each batch's statistics,
    so the batch size is part of the evaluation protocol."""
    correct, loss_sum = evaluation_sums(model, params, x, y, batch_size, range(len(y)))
    return correct / y.numel(), loss_sum / y.numel()


def evaluation_shard(model: ModelFamily, num_samples: int, batch_size: int, rank: int, world_size: int) -> range:
    """The test samples rank `rank` of `world_size` scores; the shards' sums add up to the whole
    set's. Samples are independent except under static BatchNorm, whose batches are the protocol:
    then each rank takes whole batches (a test set of one batch is not split)."""
    if not model.batch_coupled:
        return range(rank * num_samples // world_size, (rank + 1) * num_samples // world_size)
    batches = -(-num_samples // batch_size)
    lo, hi = rank * batches // world_size, (rank + 1) * batches // world_size
    return range(min(lo * batch_size, num_samples), min(hi * batch_size, num_samples))


@torch.no_grad()
def evaluation_sums(model: ModelFamily, params: Mapping[str, Tensor], x: Tensor, y: Tensor, batch_size: int,
                    samples: range) -> tuple[int, float]:
    """(correct predictions, summed cross-entropy) over the test samples in `samples`, in batches
    of `batch_size` from its start."""
    correct, loss_sum = 0, 0.0
    for start in range(samples.start, samples.stop, batch_size):
        stop = min(start + batch_size, samples.stop)
        logits = model.forward(params, x[start:stop], train=False)
        target = y[start:stop]
        loss_sum += float(token_cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(dim=-1) == target).sum())
    return correct, loss_sum
