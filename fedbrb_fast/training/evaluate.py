"""Global-model test accuracy and loss (SPEC §6)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models import Model


@torch.no_grad()
def evaluate(model: Model, params: Mapping[str, Tensor], x: Tensor, y: Tensor, batch_size: int) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) over fixed, in-order batches; static BatchNorm uses each
    batch's statistics, so the batch size is part of the evaluation protocol."""
    correct, loss_sum = 0, 0.0
    for start in range(0, len(y), batch_size):
        logits = model.forward(params, x[start:start + batch_size], train=False)
        target = y[start:start + batch_size]
        loss_sum += float(F.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(dim=1) == target).sum())
    return correct / len(y), loss_sum / len(y)
