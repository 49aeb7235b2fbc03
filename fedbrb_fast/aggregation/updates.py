"""What a client sends back: one update, or a batch of same-shape updates stacked on a client axis."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from torch import Tensor

from ..models.factored import FactoredStack


@dataclass(frozen=True)
class ClientUpdate:
    """A client's trained sub-tensors `params` (by name), its channel `indices` per group (the
    plan it trained on), its aggregation weight, and optional elementwise weight `masks`
    (broadcastable to a sub-tensor; label masking zeroes rows of absent classes)."""

    client: int
    weight: float
    indices: tuple[Tensor, ...]
    params: Mapping[str, Tensor]
    masks: Mapping[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class ClientBatch:
    """Clients whose sub-models have equal shapes, stacked on a leading client axis: what the
    batched engine produces, aggregated without per-client dictionaries.

    `weights` [n]; `indices` per group [n, k_g]; `params[name]` [n, *sub_shape], or for a 2-d
    unmasked tensor a `FactoredStack` (summed by GEMMs; `[i]` gives client i's tensor);
    `masks[name]` [n, *broadcastable to sub_shape] (optional)."""

    clients: tuple[int, ...]
    weights: Tensor
    indices: tuple[Tensor, ...]
    params: Mapping[str, Tensor | FactoredStack]
    masks: Mapping[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.clients)

    def unbind(self) -> list[ClientUpdate]:
        """One ClientUpdate per client, holding views into the stacked tensors (no copies; a
        factored tensor is built per client)."""
        return [
            ClientUpdate(client=c, weight=float(self.weights[i]), indices=tuple(ix[i] for ix in self.indices),
                         params={n: t[i] for n, t in self.params.items()},
                         masks={n: m[i] for n, m in self.masks.items()})
            for i, c in enumerate(self.clients)
        ]


def as_updates(items: Sequence[ClientUpdate | ClientBatch]) -> list[ClientUpdate]:
    """Flatten a mix of single updates and stacked batches into single updates."""
    out: list[ClientUpdate] = []
    for item in items:
        out.extend(item.unbind() if isinstance(item, ClientBatch) else [item])
    return out
