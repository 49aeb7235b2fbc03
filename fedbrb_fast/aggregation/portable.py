"""The framework-agnostic form of an update: sub-tensors by name (torch, numpy, or DLPack arrays such
as CuPy's, see array_types.py), an index set or a `(start, size)` window per sliced axis, and a
weight; no channel groups needed.

`tensor_layout` gives every sliced (tensor, axis) its own channel group, so these updates map onto
the project's `ClientUpdate` and go through the same validation and kernels. An axis may be declared
with R equal segments (attention heads, docs/algorithm.md#segments): `{"q.weight": {0: 4}}` instead
of `{"q.weight": [0]}`; a window on it is taken inside each segment, and the broadcast rule tiles it
into R * K positions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..models.layout import ModelLayout, ParamSpec
from ..plans import in_every_segment, window
from .array_types import as_tensor
from .errors import AggregationError
from .updates import ClientUpdate

# An index set (1-d integer array, tensor or list) or a window `(start, size)` that wraps around.
AxisSlice = Sequence[int] | np.ndarray | Tensor | tuple[int, int]
# Per tensor, its sliced axes: a list of axes, or {axis: R} for axes of R equal segments (R = 1: plain).
SlicedAxes = Mapping[str, Sequence[int] | Mapping[int, int]]


@dataclass(frozen=True)
class Update:
    """One client's update. `slices[name][axis]` says where the sub-tensor sits along a sliced
    axis (axes not given are whole); `masks[name]` are optional elementwise weights broadcastable
    to the sub-tensor; `client` names the client in reports (default: its arrival position)."""

    weight: float
    tensors: Mapping[str, Any]
    slices: Mapping[str, Mapping[int, AxisSlice]] = field(default_factory=dict)
    masks: Mapping[str, Any] = field(default_factory=dict)
    client: int | None = None


def tensor_layout(shapes: Mapping[str, Sequence[int]], sliced: SlicedAxes) -> ModelLayout:
    """One channel group per sliced (tensor, axis), with the axis's segments; only axes 0 and 1 may be sliced."""
    unknown = sorted(set(sliced) - set(shapes))
    if unknown:
        raise AggregationError(f"sliced axes given for unknown tensors {unknown}")
    groups: list[int] = []
    segments: list[int] = []
    specs = []
    for name, shape in shapes.items():
        axes = _segments_per_axis(name, sliced.get(name, ()))
        if not set(axes) <= set(range(min(2, len(shape)))):
            raise AggregationError(f"{name}: only axes 0 and 1 may be sliced, got {sorted(axes)}")
        axis_groups: list[int | None] = []
        for axis, size in enumerate(shape):
            if axis not in axes:
                axis_groups.append(None)
                continue
            if size % axes[axis]:
                raise AggregationError(f"{name}: axis {axis} of size {size} does not hold {axes[axis]} equal segments")
            axis_groups.append(len(groups))
            groups.append(size)
            segments.append(axes[axis])
        specs.append(ParamSpec(name, tuple(shape), tuple(axis_groups)))
    return ModelLayout(tuple(groups), tuple(specs), group_segments=tuple(segments))


def _segments_per_axis(name: str, given: Sequence[int] | Mapping[int, int]) -> dict[int, int]:
    """{axis: R} from a list of axes (R = 1) or an {axis: R} mapping."""
    if not isinstance(given, Mapping):
        return {int(axis): 1 for axis in given}
    out = {}
    for axis, r in given.items():
        if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 1:
            raise AggregationError(f"{name}: axis {axis} must hold a positive whole number of segments, got {r!r}")
        out[int(axis)] = int(r)
    return out


def sliced_axes_of(updates: Sequence[Update]) -> dict[str, list[int]]:
    """Every axis that some update slices, per tensor."""
    out: dict[str, set[int]] = {}
    for u in updates:
        for name, axes in u.slices.items():
            out.setdefault(name, set()).update(axes)
    return {name: sorted(axes) for name, axes in out.items()}


def client_update(update: Update, layout: ModelLayout, client: int) -> ClientUpdate:
    """The ClientUpdate of `update`: per channel group, the index set its tensors give (they must agree)."""
    indices: list[Tensor | None] = [None] * len(layout.group_sizes)
    for name in update.slices:
        if name not in layout.names:
            raise AggregationError(f"client {client}: slices given for unknown tensor {name!r}")
    for spec in layout.params:
        given = update.slices.get(spec.name, {})
        for axis in given:
            if not 0 <= axis < len(spec.shape) or spec.axis_groups[axis] is None:
                raise AggregationError(f"client {client}: {spec.name} is not sliced along axis {axis}")
        for axis, group in enumerate(spec.axis_groups):
            if group is None:
                continue
            index = _index(given.get(axis), spec.shape[axis], layout.segments(group),
                           f"client {client}: {spec.name} axis {axis}")
            known = indices[group]
            if known is None:
                indices[group] = index
            elif not torch.equal(known, index):
                raise AggregationError(f"client {client}: {spec.name} axis {axis} disagrees with another tensor "
                                       f"sliced by the same channel group {group}")
    full = [ix if ix is not None else torch.arange(n) for ix, n in zip(indices, layout.group_sizes, strict=True)]
    try:
        weight = float(update.weight)
    except (TypeError, ValueError):
        raise AggregationError(f"client {client}: weight must be a number, got {update.weight!r}") from None
    return ClientUpdate(client, weight, tuple(full), {k: as_tensor(t) for k, t in update.tensors.items()},
                        {k: as_tensor(m) for k, m in update.masks.items()})


def _index(given: AxisSlice | None, size: int, segments: int, where: str) -> Tensor:
    """An index set along an axis of `size`: a window `(start, size)` is taken inside each of the
    axis's `segments` and applied in every one; an index set is taken as given (global positions)."""
    if given is None:
        return torch.arange(size)
    if isinstance(given, tuple) and len(given) == 2 and all(isinstance(v, (int, np.integer)) for v in given):
        start, length = int(given[0]), int(given[1])
        span = size // segments
        if not (0 <= start < span and 1 <= length <= span):
            inside = f"each of its {segments} segments of {span}" if segments > 1 else f"an axis of {size}"
            raise AggregationError(f"{where}: window (start={start}, size={length}) does not fit {inside}")
        return in_every_segment(window(start, length, span), segments, span)
    index = as_tensor(given) if not isinstance(given, list) else torch.tensor(given)
    return index.to(torch.int64) if index.dtype in (torch.int32, torch.int16, torch.int8, torch.uint8) else index
