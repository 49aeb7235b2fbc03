"""Shared cases for the Flower benchmarks: one round's replies (trained width-1/8 sub-models as
Flower Messages) aggregated by the FedBRB strategy and, over the same replies and bytes, by
Flower's own FedAvg."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fedbrb_fast.integrations.flower import FedBRB
from fedbrb_fast.models import MLP

CASES = {"mlp256": [256, 256], "mlp1024": [1024, 1024]}

logging.getLogger("flwr").setLevel(logging.WARNING)  # per-round INFO lines would be timed too
TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1  # as inside a ServerApp


class Nodes(Grid):
    """A Grid that only lists `count` nodes: all configure_train needs; it carries no messages."""

    def __init__(self, count: int) -> None:
        self.ids = list(range(1, count + 1))

    def get_node_ids(self) -> list[int]:
        return self.ids

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        raise NotImplementedError

    def set_run(self, run: Run) -> None:
        raise NotImplementedError

    @property
    def run(self) -> Run:
        raise NotImplementedError

    def create_message(self, *args: object, **kwargs: object) -> Message:
        raise NotImplementedError

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError


def arrays_of(message: Message) -> ArrayRecord:
    """The message's "arrays" record (an ArrayRecord in every message these cases build)."""
    record = message.content["arrays"]
    if not isinstance(record, ArrayRecord):
        raise TypeError(f"'arrays' holds a {type(record).__name__}, not an ArrayRecord")
    return record


@dataclass
class FlowerCase:
    name: str
    nodes: Nodes
    strategy: FedBRB
    global_arrays: ArrayRecord
    replies: list[Message]
    reply_bytes: int
    global_bytes: int


def make_case(name: str, nodes: int, backend: str = "auto", width: float = 0.125) -> FlowerCase:
    model = MLP(784, CASES[name], 10, norm="bn")
    params = model.init(torch.Generator().manual_seed(0))
    strategy = FedBRB(model.layout, width=width, fraction_train=1.0, aggregation_backend=backend)
    grid = Nodes(nodes)
    arrays = ArrayRecord(params)
    gen = torch.Generator().manual_seed(1)
    replies = []
    for msg in strategy.configure_train(1, arrays, ConfigRecord(), grid):
        sub = arrays_of(msg).to_torch_state_dict()
        trained = {k: Array(np.asarray(v + 0.01 * torch.randn(v.shape, generator=gen))) for k, v in sub.items()}
        metrics = MetricRecord({"num-examples": 50, "train-loss": 1.0})
        replies.append(Message(RecordDict({"arrays": ArrayRecord(trained), "metrics": metrics}), reply_to=msg))
    reply_bytes = sum(len(a.data) for r in replies for a in arrays_of(r).values())
    return FlowerCase(f"{name}-{nodes}", grid, strategy, arrays, replies, reply_bytes,
                      sum(v.numel() * v.element_size() for v in params.values()))


def prepare_round(case: FlowerCase) -> None:
    """configure_train (untimed): the strategy then expects this round's replies."""
    list(case.strategy.configure_train(1, case.global_arrays, ConfigRecord(), case.nodes))


def fedbrb_aggregate(case: FlowerCase) -> ArrayRecord:
    arrays, _ = case.strategy.aggregate_train(1, case.replies)
    assert arrays is not None
    return arrays


def flower_fedavg_aggregate(case: FlowerCase) -> ArrayRecord:
    arrays, _ = FedAvg().aggregate_train(1, case.replies)
    assert arrays is not None
    return arrays


def decode_only(case: FlowerCase) -> None:
    """The floor both share: deserializing every reply's arrays."""
    for reply in case.replies:
        for array in arrays_of(reply).values():
            array.numpy()
