"""The distributed engine: a round's clients split over the ranks of a torch.distributed process
group (docs/algorithm.md#aggregation: every aggregation quantity is a sum).

Each rank plans the whole round (planning is deterministic), trains its shard with the batched
engine and accumulates its clients' partial sums A and C. One all-reduce per round adds up those
sums together with a table of every client's outcome (included or excluded, train loss); every
rank then finalizes the same global model (S and W follow from A and C). Faults are decided per
round from seeded generators, so every rank agrees on dropouts and corruptions without talking;
only a round that excluded updates gathers the reasons (strings) as well. Evaluation is sharded
over the test set, its two sums all-reduced.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

import torch
from torch import Tensor

from ..aggregation import Accumulator, AggregationResult, AggregationRule, ClientBatch, ClientUpdate, PartialSums
from ..models import ModelFamily
from ..models.layout import ModelLayout
from ..plans import ClientPlan
from ..profiling import PhaseTimer
from ..training.batched import local_steps
from ..training.evaluate import evaluation_shard, evaluation_sums
from .base import Engine
from .batched import BatchedEngine
from .context import CombinedRound, RoundContext, TrainedRound
from .process_group import Ranks
from .sharding import client_costs, shard_plans

INCLUDED, EXCLUDED, LOSS = range(3)  # columns of the outcome table: one row per client trained this round


class DistributedEngine(Engine):
    name = "distributed"

    def __init__(self, batched: BatchedEngine, ranks: Ranks) -> None:
        self.batched, self.ranks = batched, ranks
        self._round_clients: list[int] = []  # every rank's clients of the round being trained: the table's rows

    def train_round(self, ctx: RoundContext, plans: Sequence[ClientPlan], global_params: Mapping[str, Tensor],
                    timer: PhaseTimer) -> TrainedRound:
        """Train this rank's shard of `plans` (the same split on every rank)."""
        return self.batched.train_round(ctx, self._shard(ctx, plans), global_params, timer)

    def train_pieces(self, ctx: RoundContext, plans: Sequence[ClientPlan], global_params: Mapping[str, Tensor],
                     timer: PhaseTimer) -> Iterator[TrainedRound]:
        """This rank's shard, chunk by chunk as the batched engine trains it."""
        return self.batched.train_pieces(ctx, self._shard(ctx, plans), global_params, timer)

    def _shard(self, ctx: RoundContext, plans: Sequence[ClientPlan]) -> Sequence[ClientPlan]:
        steps = {p.client: local_steps(ctx.data.num_samples(p.client), ctx.local.batch_size, ctx.local.epochs)
                 for p in plans}
        shard = shard_plans(plans, self.ranks.world_size, client_costs(plans, steps, ctx.model.layout))
        self._round_clients = sorted(p.client for p in plans)
        return shard[self.ranks.rank]

    def combine(self, global_params: Mapping[str, Tensor], layout: ModelLayout,
                updates: Iterable[ClientUpdate | ClientBatch], rule: AggregationRule, *, backend: str,
                screened: Mapping[int, str], train_losses: Mapping[int, float]) -> CombinedRound:
        """The round's updates of every rank aggregated; call after `train_round` of the same round."""
        if self.ranks.world_size == 1:
            return super().combine(global_params, layout, updates, rule, backend=backend, screened=screened,
                                   train_losses=train_losses)
        local = Accumulator(global_params, layout, rule, backend=backend)
        for item in updates:  # one at a time: a streamed round holds one chunk
            local.add(item)
            del item
        left_out = {**screened, **local.excluded}
        table = self._outcomes(local.included, left_out, train_losses).to(local.dtype)
        sums, table = self._all_reduce(local.partial_sums(), table)
        total = Accumulator(global_params, layout, rule, backend=backend)
        total.add_partial_sums(sums)
        rows = list(zip(self._round_clients, table.tolist(), strict=True))
        excluded = {}
        if any(row[EXCLUDED] for _, row in rows):  # every rank sees the same table, so all gather or none do
            for reasons in self.ranks.all_gather_object(left_out, "the gather of the round's exclusion reasons"):
                excluded.update(reasons)
        result = AggregationResult(params=total.finalize().params,
                                   included=[c for c, row in rows if row[INCLUDED]], excluded=excluded,
                                   backend=total.backend)
        return CombinedRound(result, {c: row[LOSS] for c, row in rows if row[INCLUDED]})

    def _outcomes(self, included: Sequence[int], excluded: Mapping[int, str],
                  train_losses: Mapping[int, float]) -> Tensor:
        """This rank's rows of the outcome table (zeros elsewhere, so the all-reduce fills it in)."""
        table = torch.zeros(len(self._round_clients), 3, dtype=torch.float64)
        row = {c: i for i, c in enumerate(self._round_clients)}
        for c in included:
            table[row[c], INCLUDED], table[row[c], LOSS] = 1, train_losses[c]
        for c in excluded:
            table[row[c], EXCLUDED] = 1
        return table

    def _all_reduce(self, sums: Mapping[str, PartialSums], table: Tensor) -> tuple[dict[str, PartialSums], Tensor]:
        """A and C of every tensor and the outcome table (all in the accumulation dtype), flattened
        into one buffer: one all-reduce per round."""
        parts = [t for name in sums for t in (sums[name].a, sums[name].c)] + [table]
        flat = self.ranks.all_reduce(torch.cat([t.reshape(-1) for t in parts]), "the all-reduce of the partial sums")
        pieces = iter(flat.split([t.numel() for t in parts]))
        reduced = {name: PartialSums(next(pieces).view(ps.a.shape), next(pieces).view(ps.c.shape))
                   for name, ps in sums.items()}
        return reduced, next(pieces).view(table.shape)

    def evaluate(self, model: ModelFamily, params: Mapping[str, Tensor], x: Tensor, y: Tensor,
                 batch_size: int) -> tuple[float, float]:
        """Each rank scores a contiguous slice of the test set; the sums add up."""
        if self.ranks.world_size == 1:
            return super().evaluate(model, params, x, y, batch_size)
        shard = evaluation_shard(model, len(y), batch_size, self.ranks.rank, self.ranks.world_size)
        correct, loss_sum = evaluation_sums(model, params, x, y, batch_size, shard)
        total = self.ranks.all_reduce(torch.tensor([correct, loss_sum], dtype=torch.float64),
                                      "the all-reduce of the evaluation sums")
        return float(total[0]) / y.numel(), float(total[1]) / y.numel()

    def any_rank(self, flag: bool) -> bool:
        if self.ranks.world_size == 1:
            return flag
        return bool(self.ranks.all_reduce(torch.tensor([int(flag)]), "the agreement on stopping", op="max")[0])
