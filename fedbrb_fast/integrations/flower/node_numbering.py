"""Stable client numbers for Flower nodes: plans, widths and sampling are defined over client
numbers 0..n-1, as in the simulation.

"node-order" numbers nodes by sorted node id as they first connect. "reported" asks new nodes for
their number first (a `query.client_id` message, answered by the ClientApp helper with its
`partition-id`), so node k trains exactly what simulated client k does, whatever ids the nodes
got; a node that gives no usable number (an error, not a non-negative integer, or one another
node reported first) is numbered after the others.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import WARNING

from flwr.app import Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

QUERY = f"{MessageType.QUERY}.client_id"  # the ClientApp action must be a Python identifier
NUMBERINGS = ("node-order", "reported")


class NodeNumbering:
    def __init__(self, how: str, query_timeout: float) -> None:
        if how not in NUMBERINGS:
            raise ValueError(f"client_ids must be one of {NUMBERINGS}, got {how!r}")
        self.how, self.query_timeout = how, query_timeout
        self._index: dict[int, int] = {}  # node id -> client number
        self._node: dict[int, int] = {}  # client number -> node id

    def ordered(self, grid: Grid, nodes: Iterable[int]) -> list[int]:
        """`nodes` by client number, numbering the new ones first."""
        nodes = list(nodes)
        new = sorted(n for n in nodes if n not in self._index)
        if new:
            reported = self._ask(grid, new) if self.how == "reported" else {}
            for node, number in reported.items():  # reported numbers first, so none is taken
                if number not in self._node:
                    self._index[node], self._node[number] = number, node
            for node in new:
                if node not in self._index:
                    number = max(self._node, default=-1) + 1
                    self._index[node], self._node[number] = number, node
        return sorted(nodes, key=self._index.__getitem__)

    def index(self, node: int) -> int:
        return self._index[node]

    def node(self, index: int) -> int:
        return self._node[index]

    def _ask(self, grid: Grid, nodes: list[int]) -> dict[int, int]:
        messages = [Message(RecordDict(), message_type=QUERY, dst_node_id=n) for n in nodes]
        numbers: dict[int, int] = {}
        for reply in grid.send_and_receive(messages, timeout=self.query_timeout):
            node = reply.metadata.src_node_id
            value = None if reply.has_error() else next(
                (r.get("client-id") for r in reply.content.metric_records.values()), None)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0 \
                    and value not in numbers.values():
                numbers[node] = value
        for node in sorted(set(nodes) - set(numbers)):
            log(WARNING, "node %d reported no usable client-id; it is numbered after the others", node)
        return numbers


def client_id_reply(msg: Message, client_id: int) -> Message:
    return Message(RecordDict({"metrics": MetricRecord({"client-id": int(client_id)})}), reply_to=msg)
