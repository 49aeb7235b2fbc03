"""Flower test helpers: a Grid that runs a ClientApp in this process, one Context per node
(strategies run their real `start()` loop without Ray or a SuperLink; a node whose ClientApp
raises answers with an error reply, as Flower's runtime does), and the task identity that a
ServerApp run would set."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pytest
from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity


@pytest.fixture
def task_identity():
    """Flower stamps messages with the running task's identity (set here as a ServerApp run would)."""
    saved = (TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id)
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 7, 1, 1
    yield
    TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = saved


class InProcessGrid(Grid):
    def __init__(self, client_app: ClientApp, partitions: Mapping[int, int]) -> None:
        """`partitions`: node id -> its partition-id."""
        self.client_app = client_app
        self.contexts = {node: Context(run_id=1, node_id=node, node_config={"partition-id": p}, state=RecordDict(),
                                       run_config={}) for node, p in partitions.items()}
        self.sent: list[Message] = []

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for msg in messages:
            self.sent.append(msg)
            try:
                replies.append(self.client_app(msg, self.contexts[msg.metadata.dst_node_id]))
            except Exception as exc:  # noqa: BLE001 - the runtime turns any ClientApp failure into an error reply
                replies.append(Message(Error(code=1, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg))
        return replies

    # Message transport is not used by Strategy.start
    def set_run(self, run):  # pragma: no cover
        raise NotImplementedError

    @property
    def run(self):  # pragma: no cover
        raise NotImplementedError

    def create_message(self, *args, **kwargs):  # pragma: no cover
        raise NotImplementedError

    def push_messages(self, messages):  # pragma: no cover
        raise NotImplementedError

    def pull_messages(self, message_ids):  # pragma: no cover
        raise NotImplementedError
