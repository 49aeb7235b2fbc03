"""The steps every engine shares around training, single-process here.

An engine trains a round's clients (`train_round`, its own); then `combine` turns the updates
into the new global model, `evaluate` scores it and `any_rank` agrees on stopping. In one
process these are plain calls; `DistributedEngine` spreads them over the ranks of a process
group, so `Simulation` runs the same round either way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from torch import Tensor

from ..aggregation import AggregationRule, ClientBatch, ClientUpdate, aggregate
from ..models import Model
from ..models.layout import ModelLayout
from ..plans import ClientPlan
from ..profiling import PhaseTimer
from ..training import evaluate
from .context import CombinedRound, RoundContext, TrainedRound


class Engine:
    name: str
    is_main = True  # the process that writes outputs (rank 0)

    def train_round(self, ctx: RoundContext, plans: Sequence[ClientPlan], global_params: Mapping[str, Tensor],
                    timer: PhaseTimer) -> TrainedRound:
        raise NotImplementedError

    def combine(self, global_params: Mapping[str, Tensor], layout: ModelLayout,
                updates: Sequence[ClientUpdate | ClientBatch], rule: AggregationRule, *, backend: str,
                screened: Mapping[int, str], train_losses: Mapping[int, float]) -> CombinedRound:
        """Aggregate the (screened) updates; `screened` are the clients already left out, and why."""
        result = aggregate(global_params, layout, updates, rule, backend=backend)
        return CombinedRound(replace(result, excluded={**screened, **result.excluded}), dict(train_losses))

    def evaluate(self, model: Model, params: Mapping[str, Tensor], x: Tensor, y: Tensor,
                 batch_size: int) -> tuple[float, float]:
        return evaluate(model, params, x, y, batch_size)

    def any_rank(self, flag: bool) -> bool:
        """True if `flag` is set on any rank (so every rank takes the same decision)."""
        return flag
