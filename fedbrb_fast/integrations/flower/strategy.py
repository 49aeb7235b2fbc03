"""Flower ServerApp strategies for sub-model training: every sampled node gets its own sub-model
(ArrayRecord) and plan (ConfigRecord), and the replies go through the fast aggregation API.

FedBRB aggregates by weighted broadcast, FedRolex and HeteroFL by overlap averaging (docs/algorithm.md#aggregation).
Sampling and plans are seeded and depend only on the round and the nodes' client numbers
(node_numbering.py), so a run is reproducible. Failed replies (errors, timeouts) and malformed
ones (unknown node, wrong tensors, bad weight) are counted and skipped; updates with NaN/Inf are
excluded by the accumulator.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import ClassVar

from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    ConfigRecordValues,
    Message,
    MessageType,
    MetricRecord,
    MetricRecordValues,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
from flwr.supercore import log
from torch import Tensor

from ...aggregation import Accumulator, AggregationOverflow, ClientBatch, rule_for_method
from ...aggregation.backends import BACKENDS
from ...methods import describe_group, uneven_groups
from ...models.layout import ModelLayout, extract
from ...plans import ClientPlan, Shear, make_round_plans, sample_clients, shear_coefficients
from .node_numbering import NodeNumbering
from .records import MalformedReply, PlanRecord, array_record, decode_into, reply_metric, reply_weight, single_record
from .reply_stacks import ReplyStacks

Width = float | Sequence[float] | Callable[[int], float]
RoundConfigFn = Callable[[int], Mapping[str, ConfigRecordValues]]  # server round -> extra ConfigRecord entries


@dataclass
class RoundReport:
    """What happened to one round's replies, by node id: every sampled node is in exactly one of
    included, failed, malformed and non_finite (malformed also names nodes that were not sampled)."""

    server_round: int
    included: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)  # error replies and nodes that never answered
    malformed: dict[int, str] = field(default_factory=dict)
    non_finite: dict[int, str] = field(default_factory=dict)
    backend: str | None = None
    seconds: float = 0.0

    def metrics(self) -> dict[str, MetricRecordValues]:
        return {"replies-ok": len(self.included), "replies-failed": len(self.failed),
                "replies-malformed": len(self.malformed), "updates-non-finite": len(self.non_finite),
                "aggregation-ms": 1000 * self.seconds}


class SubModelStrategy(Strategy):
    """Base of the sub-model strategies; subclasses name the method.

    `layout`: the global model's layout (e.g. `build_model(...).layout`). `width`: every node's
    width; or one width per client number; or a function of the node id. Widths are fixed per
    node. `num_blocks` (K): default 1 / width for a single width, else needed. `weighting`:
    "samples" weighs an update by the reply's `weighted_by_key` metric, "uniform" by 1.
    `aggregation_backend`: as in `fedbrb_fast.aggregation` ("auto" picks the fastest available).
    `client_ids`: how nodes get client numbers, "node-order" or "reported" (see node_numbering.py;
    `query_timeout` bounds that query). `round_config(server_round)`: entries added to every
    round's ConfigRecord (e.g. a learning-rate schedule)."""

    method: ClassVar[str]

    def __init__(self, layout: ModelLayout, *, width: Width = 0.125, num_blocks: int | None = None,
                 fraction_train: float = 1.0, min_train_nodes: int = 2, min_available_nodes: int = 2,
                 fraction_evaluate: float = 0.0, min_evaluate_nodes: int = 0, weighting: str = "samples",
                 aggregation_backend: str = "auto", seed: int = 0, client_ids: str = "node-order",
                 query_timeout: float = 300.0, round_config: RoundConfigFn | None = None,
                 weighted_by_key: str = "num-examples", arrayrecord_key: str = "arrays",
                 configrecord_key: str = "config") -> None:
        for name, value in (("fraction_train", fraction_train), ("fraction_evaluate", fraction_evaluate)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if min(min_train_nodes, min_available_nodes, min_evaluate_nodes) < 0:
            raise ValueError("min_train_nodes, min_available_nodes and min_evaluate_nodes must be >= 0")
        if weighting not in ("samples", "uniform"):
            raise ValueError(f"weighting must be 'samples' or 'uniform', got {weighting!r}")
        streaming = [b for b in BACKENDS if b != "reference"]  # the Accumulator's backends
        if aggregation_backend not in streaming:
            raise ValueError(f"aggregation_backend must be one of {streaming}, got {aggregation_backend!r}")
        if num_blocks is None:
            if not isinstance(width, (int, float)):
                raise ValueError("num_blocks is needed unless every node has the same width")
            num_blocks = round(1 / width) if width > 0 else 0
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.layout, self.num_blocks, self.seed = layout, num_blocks, seed
        self._width: float | tuple[float, ...] | Callable[[int], float]
        if isinstance(width, (int, float)):
            self._width = width
            self._check_width(width, "width")
        elif callable(width):
            self._width = width
        else:
            self._width = tuple(width)
            for i, w in enumerate(self._width):
                self._check_width(w, f"width[{i}]")
        self.fraction_train, self.min_train_nodes = fraction_train, min_train_nodes
        self.fraction_evaluate, self.min_evaluate_nodes = fraction_evaluate, min_evaluate_nodes
        self.min_available_nodes, self.weighting = min_available_nodes, weighting
        self.aggregation_backend = aggregation_backend
        self.weighted_by_key, self.arrayrecord_key = weighted_by_key, arrayrecord_key
        self.configrecord_key = configrecord_key
        self.reports: dict[int, RoundReport] = {}
        self._numbering = NodeNumbering(client_ids, query_timeout)
        self._round_config = round_config
        self._widths: dict[int, float] = {}
        self._global: dict[str, Tensor] | None = None
        self._pending: dict[int, ClientPlan] = {}
        self._reply_buffers: dict[tuple, Tensor] = {}  # reused by every round's ReplyStacks

    # -- what subclasses vary -----------------------------------------------------------------------
    schedule: str = "shear"  # FedBRB sets its own per instance
    shear: tuple[Shear, ...] | None = None  # FedBRB's coefficients from its layout

    def lam(self, server_round: int) -> float:
        return 0.0

    # -- training -----------------------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._global = self._global_params(arrays)
        nodes = self._sample(grid, server_round, self.fraction_train, self.min_train_nodes)
        self._pending = dict(zip(nodes, self._plans(server_round, nodes), strict=True))
        log(INFO, "configure_train: %d nodes get %s sub-models", len(nodes), self.method)
        return [self._message(node, plan, server_round, config, MessageType.TRAIN)
                for node, plan in self._pending.items()]

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        start = time.perf_counter()
        report = RoundReport(server_round)
        assert self._global is not None
        stacks = ReplyStacks(self._pending, self.layout, {k: v.dtype for k, v in self._global.items()},
                             self._reply_buffers)
        weights, losses = self._collect(replies, stacks, report)
        new_params = self._aggregate(server_round, stacks.batches(weights, self._numbering.index), report) \
            if weights else None
        report.seconds = time.perf_counter() - start
        self.reports[server_round] = report
        self._pending = {}
        self._log(report)
        return (array_record(new_params) if new_params is not None else None), self._train_metrics(report, weights,
                                                                                                    losses)

    def _collect(self, replies: Iterable[Message], stacks: ReplyStacks,
                 report: RoundReport) -> tuple[dict[int, float], dict[int, float]]:
        """Decode every usable reply into its row of `stacks`; returns the weights and reported
        train losses of the usable ones (by node); the rest go into `report`."""
        weights: dict[int, float] = {}
        losses: dict[int, float] = {}
        answered: set[int] = set()
        for reply in replies:
            node = reply.metadata.src_node_id
            if node in answered and node in self._pending:
                report.malformed[node] = "more than one reply from this node; all of them skipped"
                weights.pop(node, None)
                report.failed.pop(node, None)
                continue
            answered.add(node)
            if reply.has_error():
                report.failed[node] = f"error reply: {reply.error.reason}"
                continue
            try:
                weights[node] = self._decode(reply, node, stacks)
            except MalformedReply as exc:
                report.malformed[node] = str(exc)
                continue
            loss = reply_metric(reply, "train-loss")
            if loss is not None:
                losses[node] = loss
        for node in sorted(self._pending.keys() - answered):
            report.failed[node] = "no reply"
        return weights, losses

    def _decode(self, reply: Message, node: int, stacks: ReplyStacks) -> float:
        """The reply's weight, after its tensors went into the node's rows of `stacks`."""
        if node not in self._pending:
            raise MalformedReply("reply from a node that was not sampled this round")
        weight = reply_weight(reply, self.weighted_by_key) if self.weighting == "samples" else 1.0
        record = single_record(reply.content.array_records, self.arrayrecord_key, "ArrayRecord")
        decode_into(record, stacks.slots(node))
        return weight

    def _aggregate(self, server_round: int, batches: list[ClientBatch],
                   report: RoundReport) -> dict[str, Tensor] | None:
        """The new global model through the streaming accumulator; None when no update survives
        (NaN/Inf updates are excluded there) or the sums overflow."""
        assert self._global is not None
        rule = rule_for_method(self.method, self.lam(server_round), self.num_blocks)
        acc = Accumulator(self._global, self.layout, rule, backend=self.aggregation_backend)
        acc.add(batches)
        report.backend = acc.backend
        try:
            result = acc.finalize()
        except AggregationOverflow as exc:  # finite updates, but their weighted sums left the float range
            report.non_finite = {**{self._node_of(c): why for c, why in acc.excluded.items()},
                                 **{self._node_of(c): str(exc) for c in acc.included}}
            return None
        report.included = [self._node_of(c) for c in result.included]
        report.non_finite = {self._node_of(c): why for c, why in result.excluded.items()}
        return result.params if result.included else None

    def _train_metrics(self, report: RoundReport, weights: dict[int, float], losses: dict[int, float]) -> MetricRecord:
        metrics = MetricRecord(report.metrics())
        known = [(weights[n], losses[n]) for n in report.included if n in losses]
        if known:
            metrics["train-loss"] = sum(w * v for w, v in known) / sum(w for w, _ in known)
        if report.included:
            metrics[self.weighted_by_key] = sum(weights[n] for n in report.included)
        return metrics

    # -- evaluation (each node evaluates a sub-model of its width on its own data) --------------------
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        if self.fraction_evaluate == 0.0:
            return []
        params = self._global_params(arrays)
        nodes = self._sample(grid, server_round, self.fraction_evaluate, self.min_evaluate_nodes)
        return [self._message(node, plan, server_round, config, MessageType.EVALUATE, params)
                for node, plan in zip(nodes, self._plans(server_round, nodes), strict=True)]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Weighted averages of the nodes' metrics; None in rounds without evaluation replies."""
        valid, failed = [], 0
        for reply in replies:
            try:
                if reply.has_error():
                    raise MalformedReply(reply.error.reason)
                reply_weight(reply, self.weighted_by_key)
                valid.append(reply.content)
            except MalformedReply as exc:
                failed += 1
                log(WARNING, "aggregate_evaluate: skipped node %d: %s", reply.metadata.src_node_id, exc)
        if not valid and not failed:
            return None
        metrics = aggregate_metricrecords(valid, self.weighted_by_key) if valid else MetricRecord()
        metrics["replies-ok"], metrics["replies-failed"] = len(valid), failed
        return metrics

    def summary(self) -> None:
        log(INFO, "\t├──> %s sub-models: width %s, K = %d blocks, seed %d", self.method,
            f"{self._width:g}" if isinstance(self._width, float) else "per node", self.num_blocks, self.seed)
        log(INFO, "\t├──> Sampling: fraction train %.2f (min %d), evaluate %.2f (min %d), min available %d",
            self.fraction_train, self.min_train_nodes, self.fraction_evaluate, self.min_evaluate_nodes,
            self.min_available_nodes)
        log(INFO, "\t└──> Aggregation: %s, weighting %s, backend %s", rule_for_method(
            self.method, self.lam(1), self.num_blocks).kind, self.weighting, self.aggregation_backend)

    # -- helpers ------------------------------------------------------------------------------------
    def _global_params(self, arrays: ArrayRecord) -> dict[str, Tensor]:
        params = dict(arrays.to_torch_state_dict())
        expected = {s.name: s.shape for s in self.layout.params}
        got = {k: tuple(v.shape) for k, v in params.items()}
        if got != expected:
            raise ValueError(f"the global ArrayRecord {got} does not match the strategy's layout {expected}")
        return params

    def _sample(self, grid: Grid, server_round: int, fraction: float, minimum: int) -> list[int]:
        """Seeded choice among the connected nodes (in client-number order), after waiting for
        enough of them: with client numbers 0..n-1 the simulation's `sample_clients` choice."""
        wanted = max(self.min_available_nodes, minimum)
        while len(nodes := sorted(grid.get_node_ids())) < wanted:
            log(INFO, "Waiting for nodes to connect: %d connected (minimum required: %d).", len(nodes), wanted)
            time.sleep(1)
        nodes = self._numbering.ordered(grid, nodes)
        count = min(len(nodes), max(int(len(nodes) * fraction), minimum))
        return [nodes[i] for i in sample_clients(server_round - 1, len(nodes), count, self.seed)]

    def _plans(self, server_round: int, nodes: list[int]) -> list[ClientPlan]:
        widths = [self._width_of(node) for node in nodes]
        return make_round_plans(self.method, server_round - 1, [self._numbering.index(n) for n in nodes], widths,
                                group_sizes=self.layout.group_sizes, num_blocks=self.num_blocks, seed=self.seed,
                                schedule=self.schedule, shear=self.shear,
                                group_segments=self.layout.group_segments)

    def _width_of(self, node: int) -> float:
        if node not in self._widths:
            if callable(self._width):
                width = self._width(node)
            elif isinstance(self._width, tuple):
                index = self._numbering.index(node)
                if index >= len(self._width):
                    raise ValueError(f"node {node} is client {index}, but only {len(self._width)} widths were given")
                width = self._width[index]
            else:
                width = self._width
            self._widths[node] = self._check_width(width, f"width of node {node}")
        return self._widths[node]

    def _check_width(self, width: float, what: str) -> float:
        blocks = width * self.num_blocks
        if not 0 < width <= 1 or abs(blocks - round(blocks)) > 1e-9:
            raise ValueError(f"{what} = {width} must be in (0, 1] and a multiple of 1/K = 1/{self.num_blocks}")
        if self.method == "fedbrb":
            sizes, segments = self.layout.group_sizes, self.layout.group_segments
            uneven = [describe_group(g, sizes, segments) for g in uneven_groups(sizes, self.num_blocks, segments)]
            if uneven:
                raise ValueError(f"fedbrb: {', '.join(uneven)} do not split into K = {self.num_blocks} blocks")
        return float(width)

    def _message(self, node: int, plan: ClientPlan, server_round: int, config: ConfigRecord, kind: str,
                 params: Mapping[str, Tensor] | None = None) -> Message:
        params = params if params is not None else self._global
        assert params is not None
        plan_record = PlanRecord.of(self.method, plan, self.layout.group_sizes, self.layout.group_segments)
        per_round = self._round_config(server_round) if self._round_config else {}
        content = RecordDict({
            self.arrayrecord_key: array_record(extract(params, self.layout, plan.indices)),
            self.configrecord_key: ConfigRecord({**config, **per_round, "server-round": server_round,
                                                 **plan_record.to_config()}),
        })
        return Message(content=content, message_type=kind, dst_node_id=node)

    def _node_of(self, client: int) -> int:
        return self._numbering.node(client)

    def _log(self, report: RoundReport) -> None:
        log(INFO, "aggregate_train: %d updates aggregated (%s), %d failed, %d malformed, %d non-finite, %.1f ms",
            len(report.included), report.backend or "none", len(report.failed), len(report.malformed),
            len(report.non_finite), 1000 * report.seconds)
        for kind, reasons in (("failed", report.failed), ("malformed", report.malformed),
                              ("non-finite", report.non_finite)):
            for node, why in reasons.items():
                log(WARNING, "\t> node %d %s: %s", node, kind, why)


class FedBRB(SubModelStrategy):
    """Block-wise rolling sub-models, weighted-broadcast aggregation. `lam`: the broadcast
    weight, or a function of the server round; `schedule`: "shear" or the "diagonal" ablation."""

    method = "fedbrb"

    def __init__(self, layout: ModelLayout, *, lam: float | Callable[[int], float] = 0.5, schedule: str = "shear",
                 **kwargs) -> None:
        if schedule not in ("shear", "diagonal"):
            raise ValueError(f"schedule must be 'shear' or 'diagonal', got {schedule!r}")
        if not callable(lam) and not 0.0 <= lam <= 1.0:
            raise ValueError(f"lam must be in [0, 1], got {lam}")
        self._lam, self.schedule = lam, schedule
        self.shear = shear_coefficients(layout)  # a layout FedBRB cannot roll is refused here
        super().__init__(layout, **kwargs)

    def lam(self, server_round: int) -> float:
        value = float(self._lam(server_round) if callable(self._lam) else self._lam)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"lam({server_round}) = {value} is outside [0, 1]")
        return value


class FedRolex(SubModelStrategy):
    """A window rolling by one channel per round; overlap averaging."""

    method = "fedrolex"


class HeteroFL(SubModelStrategy):
    """Static leading channels; overlap averaging."""

    method = "heterofl"
