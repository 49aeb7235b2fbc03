"""Which axes of which parameter are sliced, and by which channel group (docs/algorithm.md#blocks).

A client model is the gather of every global tensor on the plan's channel indices along its
sliced axes; nothing else about the architecture is needed to extract or aggregate it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

# What a tensor is to the model: initialization and the engines read this, never the tensor's name.
Role = Literal["weight", "bias", "norm_scale", "norm_shift", "embedding"]
ROLES: tuple[Role, ...] = get_args(Role)
FAN_IN_ROLES = ("weight", "bias")  # initialized uniformly in +-1/sqrt(fan_in)


@dataclass(frozen=True)
class ParamSpec:
    """One parameter tensor: its global shape and, per axis, the channel group tied to it
    (None: the axis is whole). Only axis 0 (out) and axis 1 (in) may be sliced.

    `role` and `fan_in` (the inputs of one output unit, for weights and biases) describe a model's
    tensor; layouts built for aggregation alone (`aggregation.portable`) leave them out."""

    name: str
    shape: tuple[int, ...]
    axis_groups: tuple[int | None, ...]
    role: Role | None = None
    fan_in: int | None = None

    def __post_init__(self) -> None:
        if len(self.axis_groups) != len(self.shape):
            raise ValueError(f"{self.name}: {len(self.axis_groups)} axis groups for a {len(self.shape)}-d shape")
        if any(g is not None for g in self.axis_groups[2:]):
            raise ValueError(f"{self.name}: only axes 0 and 1 may be sliced")
        if self.role is not None and self.role not in ROLES:
            raise ValueError(f"{self.name}: unknown role {self.role!r} (one of {', '.join(ROLES)})")
        if self.role in FAN_IN_ROLES and (self.fan_in is None or self.fan_in < 1):
            raise ValueError(f"{self.name}: a {self.role} needs its fan-in (a positive integer), got {self.fan_in}")

    @property
    def sliced_axes(self) -> tuple[tuple[int, int], ...]:
        """(axis, group) for every sliced axis."""
        return tuple((a, g) for a, g in enumerate(self.axis_groups) if g is not None)


@dataclass(frozen=True)
class ModelLayout:
    """The global model's channel groups (sizes N_g in network order) and parameter specs.

    `classifier`: the tensors whose axis 0 runs over the classes (the logits' layer); label
    masking weights their rows. Empty for layouts built for aggregation alone.

    `group_segments`: R_g per group (docs/algorithm.md#segments; empty: 1 for every group). A group
    of R_g segments (attention heads) spans N_g = R_g * d_g channels on its axes: the group's index
    set of d_g channels applies inside every segment, and the axis has R_g * K tile positions of
    B_g = d_g / K channels."""

    group_sizes: tuple[int, ...]
    params: tuple[ParamSpec, ...]
    classifier: tuple[str, ...] = ()
    group_segments: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.group_segments:
            if len(self.group_segments) != len(self.group_sizes):
                raise ValueError(f"layout: {len(self.group_segments)} segment counts for "
                                 f"{len(self.group_sizes)} groups")
            for g, (n, r) in enumerate(zip(self.group_sizes, self.group_segments, strict=True)):
                if r < 1 or n % r:
                    raise ValueError(f"layout: channel group {g} of size {n} does not hold {r} equal segments")
        names = [p.name for p in self.params]
        if len(set(names)) != len(names):
            raise ValueError(f"layout: tensor names repeat: {sorted({n for n in names if names.count(n) > 1})}")
        for spec in self.params:
            for axis, g in spec.sliced_axes:
                if not 0 <= g < len(self.group_sizes) or spec.shape[axis] != self.group_sizes[g]:
                    raise ValueError(f"{spec.name}: axis {axis} does not match channel group {g}")
        for name in self.classifier:
            if name not in names:
                raise ValueError(f"layout.classifier: no tensor {name!r}")
            spec = self.spec(name)
            if not spec.shape or spec.axis_groups[0] is not None:
                raise ValueError(f"layout.classifier: {name}'s axis 0 must be the (unsliced) class axis")
        if len({self.spec(n).shape[0] for n in self.classifier}) > 1:
            raise ValueError(f"layout.classifier: tensors {list(self.classifier)} disagree on the number of classes")

    @property
    def num_classes(self) -> int:
        if not self.classifier:
            raise ValueError("layout: no classifier tensors named")
        return self.spec(self.classifier[0]).shape[0]

    @property
    def adjacency(self) -> frozenset[tuple[int, int]]:
        """Pairs (g, g') of distinct groups, g < g', that slice one tensor, one on each axis
        (docs/algorithm.md#blocks): a pure function of the specs' axis groups."""
        pairs = set()
        for spec in self.params:
            groups = [g for _, g in spec.sliced_axes]
            if len(groups) == 2 and groups[0] != groups[1]:
                pairs.add((min(groups), max(groups)))
        return frozenset(pairs)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def spec(self, name: str) -> ParamSpec:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def segments(self, group: int) -> int:
        """R_g: how many equal segments the group's axes hold (1 unless declared)."""
        return self.group_segments[group] if self.group_segments else 1

    def segment_size(self, group: int) -> int:
        """d_g = N_g / R_g: the channels one segment holds, over which plans choose index sets."""
        return self.group_sizes[group] // self.segments(group)

    def block_sizes(self, num_blocks: int) -> tuple[int, ...]:
        """B_g = d_g / K for every group."""
        return tuple(self.segment_size(g) // num_blocks for g in range(len(self.group_sizes)))

    def sub_shape(self, spec: ParamSpec, indices: Sequence[Tensor]) -> tuple[int, ...]:
        """Shape of the client tensor for per-group channel `indices`."""
        return tuple(len(indices[g]) if g is not None else n for n, g in zip(spec.shape, spec.axis_groups, strict=True))


def chain_layout(in_width: int, hidden: Sequence[int], num_classes: int, norm: str,
                 kernel: tuple[int, ...] = ()) -> ModelLayout:
    """The layout of a chain of hidden layers (weights [N_g, N_{g-1}, *kernel], biases, optional
    norm affine parameters), each tied to its channel group, then an unsliced-output classifier."""
    specs: list[ParamSpec] = []
    fan_in, prev = in_width, None
    whole = (None,) * len(kernel)
    for g, n in enumerate(hidden):
        inputs = fan_in * math.prod(kernel)
        specs.append(ParamSpec(f"hidden{g}.weight", (n, fan_in, *kernel), (g, prev, *whole), "weight", inputs))
        specs.append(ParamSpec(f"hidden{g}.bias", (n,), (g,), "bias", inputs))
        if norm != "none":
            specs.append(ParamSpec(f"norm{g}.weight", (n,), (g,), "norm_scale"))
            specs.append(ParamSpec(f"norm{g}.bias", (n,), (g,), "norm_shift"))
        fan_in, prev = n, g
    specs.append(ParamSpec("out.weight", (num_classes, fan_in), (None, prev), "weight", fan_in))
    specs.append(ParamSpec("out.bias", (num_classes,), (None,), "bias", fan_in))
    return ModelLayout(tuple(hidden), tuple(specs), classifier=("out.weight", "out.bias"))


def gather_tensor(tensor: Tensor, spec: ParamSpec, indices: Sequence[Tensor]) -> Tensor:
    """The sub-tensor on `indices` (one int64 index tensor per group) along the sliced axes."""
    out = tensor
    for axis, g in spec.sliced_axes:
        out = out.index_select(axis, indices[g])
    return out


def extract(params: Mapping[str, Tensor], layout: ModelLayout, indices: Sequence[Tensor]) -> dict[str, Tensor]:
    """A client's sub-model: every global tensor gathered on its plan (copies, never views)."""
    return {s.name: gather_tensor(params[s.name], s, indices).clone() for s in layout.params}


def full_indices(layout: ModelLayout) -> tuple[Tensor, ...]:
    return tuple(torch.arange(n) for n in layout.group_sizes)
