"""What a client sends back, and the checks every update passes before it may touch the model."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..models.layout import ModelLayout


class AggregationError(ValueError):
    """Malformed aggregation input; raised before any global tensor changes."""


class AggregationOverflow(AggregationError):
    """Finite updates whose weighted sums left the float range; the new model is discarded."""

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__(f"global {', '.join(names)}: the weighted sums overflowed (client weights x values exceed "
                         f"the float range); the global model is unchanged. Screen updates with "
                         f"faults.max_update_norm or use smaller weights")


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

    `weights` [n]; `indices` per group [n, k_g]; `params[name]` [n, *sub_shape];
    `masks[name]` [n, *broadcastable to sub_shape] (optional)."""

    clients: tuple[int, ...]
    weights: Tensor
    indices: tuple[Tensor, ...]
    params: Mapping[str, Tensor]
    masks: Mapping[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.clients)

    def unbind(self) -> list[ClientUpdate]:
        """One ClientUpdate per client, holding views into the stacked tensors (no copies)."""
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


def validate_updates(global_params: Mapping[str, Tensor], layout: ModelLayout, updates: Sequence[ClientUpdate]) -> None:
    """Raise AggregationError naming the client and tensor for any structural problem."""
    missing = [n for n in layout.names if n not in global_params]
    if missing:
        raise AggregationError(f"global parameters lack tensors {missing}")
    for spec in layout.params:
        if tuple(global_params[spec.name].shape) != spec.shape:
            raise AggregationError(f"global tensor {spec.name}: shape {tuple(global_params[spec.name].shape)}, layout says {spec.shape}")
    seen: set[int] = set()
    for u in updates:
        who = f"client {u.client}"
        if u.client in seen:
            raise AggregationError(f"{who}: sent more than one update this round")
        seen.add(u.client)
        if not isinstance(u.weight, (int, float)) or not math.isfinite(u.weight) or u.weight < 0:
            raise AggregationError(f"{who}: weight must be a finite number >= 0, got {u.weight!r}")
        _validate_indices(who, u.indices, layout.group_sizes)
        unknown = sorted(set(u.params) - set(layout.names))
        absent = [n for n in layout.names if n not in u.params]
        if unknown or absent:
            raise AggregationError(f"{who}: unknown tensors {unknown}, missing tensors {absent}")
        for spec in layout.params:
            t = u.params[spec.name]
            expected = layout.sub_shape(spec, u.indices)
            if not isinstance(t, Tensor) or not t.is_floating_point():
                raise AggregationError(f"{who}: {spec.name} must be a floating-point tensor")
            if tuple(t.shape) != expected:
                raise AggregationError(f"{who}: {spec.name} has shape {tuple(t.shape)}, its plan gives {expected}")
        for name, mask in u.masks.items():
            if name not in u.params:
                raise AggregationError(f"{who}: mask for unknown tensor {name!r}")
            try:
                torch.broadcast_shapes(mask.shape, u.params[name].shape)
            except RuntimeError:
                raise AggregationError(f"{who}: mask of {name} with shape {tuple(mask.shape)} does not broadcast "
                                       f"to {tuple(u.params[name].shape)}") from None
            if not torch.isfinite(mask).all() or (mask < 0).any():
                raise AggregationError(f"{who}: mask of {name} must be finite and >= 0")


def _validate_indices(who: str, indices: Sequence[Tensor], group_sizes: Sequence[int]) -> None:
    if len(indices) != len(group_sizes):
        raise AggregationError(f"{who}: {len(indices)} index sets for {len(group_sizes)} channel groups")
    for g, (idx, n) in enumerate(zip(indices, group_sizes)):
        if not isinstance(idx, Tensor) or idx.dtype not in (torch.int64, torch.int32) or idx.dim() != 1:
            raise AggregationError(f"{who}: index set of group {g} must be a 1-d integer tensor")
        if idx.numel() == 0:
            raise AggregationError(f"{who}: index set of group {g} is empty")
        if idx.min() < 0 or idx.max() >= n:
            raise AggregationError(f"{who}: index set of group {g} has channels outside [0, {n})")
        if idx.unique().numel() != idx.numel():
            raise AggregationError(f"{who}: index set of group {g} repeats channels")


def non_finite_tensors(update: ClientUpdate) -> list[str]:
    """Names of the update's tensors holding NaN or Inf (such an update is excluded)."""
    return [n for n, t in update.params.items() if not torch.isfinite(t).all()]
