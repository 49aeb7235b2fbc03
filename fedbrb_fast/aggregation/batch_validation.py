"""The checks of `validate_updates`, vectorized over stacked `ClientBatch`es.

Validating a 1,000-client batch one client at a time costs more than aggregating it, so batches
are checked with a few tensor operations each. Whenever something is wrong, the reference
`validate_updates` runs on the same input and raises its exact error (the client and tensor it
names, in its order); single `ClientUpdate`s always go through the reference.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import torch
from torch import Tensor

from ..models.layout import ModelLayout
from .updates import AggregationError, ClientBatch, ClientUpdate, as_updates, validate_updates


def check_items(global_params: Mapping[str, Tensor], layout: ModelLayout, items: Sequence[ClientUpdate | ClientBatch],
                seen: Collection[int] = ()) -> None:
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
        if not isinstance(t, Tensor) or t.dim() < 1 or t.shape[0] != n:
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
    for idx, n in zip(b.indices, layout.group_sizes):
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
