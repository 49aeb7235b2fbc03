"""Every check an update passes before it may touch the global model.

`validate_updates` is the reference: it checks updates one at a time and names the client and
tensor at fault. `check_items` does the same for stacked `ClientBatch`es with a few tensor
operations each (validating a 1,000-client batch one client at a time costs more than aggregating
it); whenever something is wrong it runs `validate_updates` on the same input, which raises the
exact error in the reference's order. Single `ClientUpdate`s always go through the reference.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

import torch
from torch import Tensor

from ..models.factored import FactoredStack
from ..models.layout import ModelLayout
from .errors import AggregationError
from .updates import ClientBatch, ClientUpdate, as_updates


def validate_updates(global_params: Mapping[str, Tensor], layout: ModelLayout, updates: Sequence[ClientUpdate]) -> None:
    """Raise AggregationError naming the client and tensor for any structural problem."""
    missing = [n for n in layout.names if n not in global_params]
    if missing:
        raise AggregationError(f"global parameters lack tensors {missing}")
    for spec in layout.params:
        if tuple(global_params[spec.name].shape) != spec.shape:
            raise AggregationError(
                f"global tensor {spec.name}: shape {tuple(global_params[spec.name].shape)}, layout says {spec.shape}"
            )
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
                raise AggregationError(
                    f"{who}: mask of {name} with shape {tuple(mask.shape)} does not broadcast "
                    f"to {tuple(u.params[name].shape)}"
                ) from None
            if not torch.isfinite(mask).all() or (mask < 0).any():
                raise AggregationError(f"{who}: mask of {name} must be finite and >= 0")


def _validate_indices(who: str, indices: Sequence[Tensor], group_sizes: Sequence[int]) -> None:
    if len(indices) != len(group_sizes):
        raise AggregationError(f"{who}: {len(indices)} index sets for {len(group_sizes)} channel groups")
    for g, (idx, n) in enumerate(zip(indices, group_sizes, strict=True)):
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


def check_items(
    global_params: Mapping[str, Tensor],
    layout: ModelLayout,
    items: Sequence[ClientUpdate | ClientBatch],
    seen: Collection[int] = (),
) -> None:
    """Raise AggregationError as validate_updates would; also for a client already in `seen`."""
    batches = [b for b in items if isinstance(b, ClientBatch)]
    for b in batches:
        _check_structure(b, layout)
    clients = [c for item in items for c in (item.clients if isinstance(item, ClientBatch) else (item.client,))]
    problem = None
    for b in batches:
        problem = problem or _batch_problem(b, layout)
    if problem or len(batches) < len(items) or len(set(clients)) < len(clients):
        validate_updates(global_params, layout, as_updates(items))
        if problem:  # the reference accepts what the vectorized checks reject: a bug here, report it plainly
            raise AggregationError(problem)
    again = next((c for c in clients if c in seen), None)
    if again is not None:
        raise AggregationError(f"client {again}: sent more than one update this round")


def _check_structure(b: ClientBatch, layout: ModelLayout) -> None:
    """Every stacked field must have the batch's client count on its leading axis."""
    n = len(b.clients)
    where = f"client batch {tuple(b.clients[:3])}{'...' if n > 3 else ''}"
    if not isinstance(b.weights, Tensor) or tuple(b.weights.shape) != (n,):
        raise AggregationError(f"{where}: weights must be a tensor of shape ({n},)")
    fields = [("index set", ix) for ix in b.indices] + [(f"tensor {k}", t) for k, t in b.params.items()]
    fields += [(f"mask of {k}", m) for k, m in b.masks.items()]
    for what, t in fields:
        if not isinstance(t, Tensor | FactoredStack) or t.dim() < 1 or t.shape[0] != n:
            raise AggregationError(f"{where}: {what} must be stacked on a leading axis of {n} clients")


def _batch_problem(b: ClientBatch, layout: ModelLayout) -> str | None:
    """What validate_updates would reject in this batch, or None."""
    if len(b) == 0:
        return None  # nothing to unbind, nothing the reference would look at
    weights = b.weights.to(torch.float64)
    if not torch.isfinite(weights).all() or (weights < 0).any():
        return "a weight is negative or not finite"
    if len(b.indices) != len(layout.group_sizes):
        return "wrong number of index sets"
    for idx, n in zip(b.indices, layout.group_sizes, strict=True):
        if idx.dtype not in (torch.int64, torch.int32) or idx.dim() != 2 or idx.shape[1] == 0:
            return "an index set is not a non-empty 1-d integer tensor"
        if idx.min() < 0 or idx.max() >= n:
            return "an index set leaves its channel group"
        ordered = idx.sort(dim=1).values
        if (ordered[:, 1:] == ordered[:, :-1]).any():
            return "an index set repeats a channel"
    if set(b.params) != set(layout.names):
        return "unknown or missing tensors"
    single = tuple(ix[0] for ix in b.indices)
    for spec in layout.params:
        t = b.params[spec.name]
        if not t.is_floating_point() or tuple(t.shape[1:]) != layout.sub_shape(spec, single):
            return f"tensor {spec.name} has the wrong shape or dtype"
    for name, mask in b.masks.items():
        if name not in b.params:
            return f"mask for unknown tensor {name}"
        try:
            torch.broadcast_shapes(mask.shape[1:], b.params[name].shape[1:])
        except RuntimeError:
            return f"mask of {name} does not broadcast"
        if not torch.isfinite(mask).all() or (mask < 0).any():
            return f"mask of {name} is negative or not finite"
    return None
