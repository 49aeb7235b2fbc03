"""What an engine needs to train one round, and what it hands back to aggregation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..aggregation import AggregationResult, ClientBatch, ClientUpdate
from ..data import FederatedData
from ..models import ModelFamily
from ..training import LocalTraining


@dataclass(frozen=True)
class RoundContext:
    round_idx: int
    seed: int
    model: ModelFamily
    data: FederatedData
    local: LocalTraining
    weighting: str  # "samples" or "uniform"
    label_masking: bool

    def client_weight(self, client: int) -> float:
        return float(self.data.num_samples(client)) if self.weighting == "samples" else 1.0

    def label_mask(self, client: int) -> Tensor | None:
        """Boolean [classes] of the classes in the client's data, or None without label masking."""
        return self.classes_present(client) if self.label_masking else None

    def classes_present(self, client: int) -> Tensor:
        """Boolean [classes]: which classes occur in the client's data."""
        mask = torch.zeros(self.data.num_classes, dtype=torch.bool)
        mask[self.data.client_labels(client)] = True
        return mask

    def aggregation_masks(self, client: int) -> dict[str, Tensor]:
        """Classifier rows of absent classes do not enter aggregation (label masking)."""
        mask = self.label_mask(client)
        if mask is None:
            return {}
        rows = mask.to(torch.float32)
        layout = self.model.layout
        return {name: rows.view(-1, *([1] * (len(layout.spec(name).shape) - 1))) for name in layout.classifier}


@dataclass(frozen=True)
class TrainedRound:
    updates: Sequence[ClientUpdate | ClientBatch]  # per client (reference) or stacked by width (batched)
    train_losses: dict[int, float]


@dataclass(frozen=True)
class CombinedRound:
    """The round's aggregate: new global model, included and excluded clients (screened ones too)
    and the train losses of at least every included client, over all processes."""

    result: AggregationResult
    train_losses: dict[int, float]
