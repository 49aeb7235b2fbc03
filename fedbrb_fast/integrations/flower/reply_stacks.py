"""One round's replies decoded straight into stacked buffers, one per sub-model shape, so the
accumulator makes one pass per shape and each reply's bytes are copied once. The buffers come from
a pool kept across rounds: fresh memory costs a page fault per page on every round."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from ...aggregation import ClientBatch
from ...models.layout import ModelLayout
from ...plans import ClientPlan


class ReplyStacks:
    def __init__(self, plans: Mapping[int, ClientPlan], layout: ModelLayout, dtypes: Mapping[str, torch.dtype],
                 pool: dict[tuple, Tensor]) -> None:
        """`plans`: the round's sampled nodes and their plans; `dtypes`: per tensor, the global
        model's; `pool`: buffers of earlier rounds, reused and updated here."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for node, plan in plans.items():
            groups.setdefault(tuple(len(ix) for ix in plan.indices), []).append(node)
        self._plans = plans
        self._groups = groups
        self._buffers = {
            key: {s.name: _pooled(pool, (key, s.name), (len(nodes), *layout.sub_shape(s, plans[nodes[0]].indices)),
                                  dtypes[s.name]) for s in layout.params}
            for key, nodes in groups.items()}
        self._row = {node: (key, i) for key, nodes in groups.items() for i, node in enumerate(nodes)}

    def slots(self, node: int) -> dict[str, Tensor]:
        """Where the node's reply goes: its row of every stacked tensor."""
        key, i = self._row[node]
        return {name: buf[i] for name, buf in self._buffers[key].items()}

    def batches(self, weights: Mapping[int, float], client_of: Callable[[int], int]) -> list[ClientBatch]:
        """A ClientBatch per shape of the nodes in `weights` (the usable replies); rows of other
        nodes are left out (a copy only when some are missing)."""
        out = []
        for key, nodes in self._groups.items():
            rows = [i for i, node in enumerate(nodes) if node in weights]
            if not rows:
                continue
            kept = [nodes[i] for i in rows]
            buffers = self._buffers[key]
            if len(rows) < len(nodes):
                index = torch.tensor(rows)
                buffers = {name: buf.index_select(0, index) for name, buf in buffers.items()}
            per_group = zip(*(self._plans[node].indices for node in kept), strict=True)
            out.append(ClientBatch(
                clients=tuple(client_of(node) for node in kept),
                weights=torch.tensor([weights[node] for node in kept], dtype=torch.float64),
                indices=tuple(torch.stack(ix) for ix in per_group),
                params=buffers))
        return out


def _pooled(pool: dict[tuple, Tensor], key: tuple, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """The first shape[0] rows of the pool's buffer for `key`, grown when too small (so the pool
    holds at most the largest round's replies)."""
    buf = pool.get(key)
    if buf is None or buf.dtype != dtype or tuple(buf.shape[1:]) != shape[1:] or buf.shape[0] < shape[0]:
        buf = pool[key] = torch.empty(shape, dtype=dtype)
    return buf[: shape[0]]
