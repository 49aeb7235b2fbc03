"""The steps every engine shares around training, single-process here.

An engine trains a round's clients (`train_round`, its own, or piece by piece with
`train_pieces`); then `combine` turns the updates into the new global model, `evaluate` scores it
and `any_rank` agrees on stopping. In one process these are plain calls; `DistributedEngine`
spreads them over the ranks of a process group, so `Simulation` runs the same round either way.
`combine` takes the updates as a one-pass stream, so a round whose pieces are trained as
aggregation asks for them holds one piece at a time (the batched engine: one chunk of
`max_clients_per_step` clients).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace

from torch import Tensor

from ..aggregation import Accumulator, AggregationResult, AggregationRule, ClientBatch, ClientUpdate, aggregate
from ..models import ModelFamily
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

    def train_pieces(self, ctx: RoundContext, plans: Sequence[ClientPlan], global_params: Mapping[str, Tensor],
                     timer: PhaseTimer) -> Iterator[TrainedRound]:
        """The round's training in pieces, each trained when the next is asked for; one piece here."""
        yield self.train_round(ctx, plans, global_params, timer)

    def combine(self, global_params: Mapping[str, Tensor], layout: ModelLayout,
                updates: Iterable[ClientUpdate | ClientBatch], rule: AggregationRule, *, backend: str,
                screened: Mapping[int, str], train_losses: Mapping[int, float]) -> CombinedRound:
        """Aggregate the (screened) updates; `screened` are the clients already left out, and why.
        `updates` is read once, item by item, before `screened` and `train_losses` (which may fill
        while it is read); the fused backends hold one item at a time."""
        result = aggregate_stream(global_params, layout, updates, rule, backend=backend)
        return CombinedRound(replace(result, excluded={**screened, **result.excluded}), dict(train_losses))

    def evaluate(self, model: ModelFamily, params: Mapping[str, Tensor], x: Tensor, y: Tensor,
                 batch_size: int) -> tuple[float, float]:
        return evaluate(model, params, x, y, batch_size)

    def any_rank(self, flag: bool) -> bool:
        """True if `flag` is set on any rank (so every rank takes the same decision)."""
        return flag


def aggregate_stream(global_params: Mapping[str, Tensor], layout: ModelLayout,
                     updates: Iterable[ClientUpdate | ClientBatch], rule: AggregationRule, *,
                     backend: str) -> AggregationResult:
    """`aggregate` over a one-pass stream: a fused backend validates and adds each item as it
    arrives (an invalid item raises before the global model changes); the reference takes them all."""
    if backend == "reference":
        return aggregate(global_params, layout, list(updates), rule, backend=backend)
    acc = Accumulator(global_params, layout, rule, backend=backend)
    for item in updates:
        acc.add(item)
        del item  # not held while the stream trains its next item
    return acc.finalize()

