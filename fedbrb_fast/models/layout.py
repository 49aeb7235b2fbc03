"""Which axes of which parameter are sliced, and by which channel group (docs/algorithm.md#blocks).

A client model is the gather of every global tensor on the plan's channel indices along its
sliced axes; nothing else about the architecture is needed to extract or aggregate it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class ParamSpec:
    """One parameter tensor: its global shape and, per axis, the channel group tied to it
    (None: the axis is whole). Only axis 0 (out) and axis 1 (in) may be sliced."""

    name: str
    shape: tuple[int, ...]
    axis_groups: tuple[int | None, ...]

    def __post_init__(self) -> None:
        if len(self.axis_groups) != len(self.shape):
            raise ValueError(f"{self.name}: {len(self.axis_groups)} axis groups for a {len(self.shape)}-d shape")
        if any(g is not None for g in self.axis_groups[2:]):
            raise ValueError(f"{self.name}: only axes 0 and 1 may be sliced")

    @property
    def sliced_axes(self) -> tuple[tuple[int, int], ...]:
        """(axis, group) for every sliced axis."""
        return tuple((a, g) for a, g in enumerate(self.axis_groups) if g is not None)


@dataclass(frozen=True)
class ModelLayout:
    """The global model's channel groups (sizes N_g in network order) and parameter specs."""

    group_sizes: tuple[int, ...]
    params: tuple[ParamSpec, ...]

    def __post_init__(self) -> None:
        for spec in self.params:
            for axis, g in spec.sliced_axes:
                if not 0 <= g < len(self.group_sizes) or spec.shape[axis] != self.group_sizes[g]:
                    raise ValueError(f"{spec.name}: axis {axis} does not match channel group {g}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def spec(self, name: str) -> ParamSpec:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def block_sizes(self, num_blocks: int) -> tuple[int, ...]:
        """B_g = N_g / K for every group."""
        return tuple(n // num_blocks for n in self.group_sizes)

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
        specs.append(ParamSpec(f"hidden{g}.weight", (n, fan_in, *kernel), (g, prev, *whole)))
        specs.append(ParamSpec(f"hidden{g}.bias", (n,), (g,)))
        if norm != "none":
            specs.append(ParamSpec(f"norm{g}.weight", (n,), (g,)))
            specs.append(ParamSpec(f"norm{g}.bias", (n,), (g,)))
        fan_in, prev = n, g
    specs.append(ParamSpec("out.weight", (num_classes, fan_in), (None, prev)))
    specs.append(ParamSpec("out.bias", (num_classes,), (None,)))
    return ModelLayout(tuple(hidden), tuple(specs))


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
