"""Seeded initialization of a global model from its layout's roles."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from .layout import ModelLayout, ParamSpec


def init_params(layout: ModelLayout, generator: torch.Generator) -> dict[str, Tensor]:
    """PyTorch's default init per role: weights and biases uniform in +-1/sqrt(fan_in) (Linear,
    Conv), norm scales 1 and shifts 0, embeddings N(0, 1) (Embedding). Drawn in layout order from
    one generator, so it is reproducible."""
    return {spec.name: _init_tensor(spec, generator) for spec in layout.params}


def _init_tensor(spec: ParamSpec, generator: torch.Generator) -> Tensor:
    if spec.role in ("weight", "bias"):
        assert spec.fan_in is not None  # ParamSpec requires it for these roles
        return (torch.rand(spec.shape, generator=generator) * 2 - 1) * (1.0 / math.sqrt(spec.fan_in))
    if spec.role == "norm_scale":
        return torch.ones(spec.shape)
    if spec.role == "norm_shift":
        return torch.zeros(spec.shape)
    if spec.role == "embedding":
        return torch.randn(spec.shape, generator=generator)
    raise ValueError(f"{spec.name}: no role, so no initialization (give the ParamSpec a role)")


def tile_first_block(params: Mapping[str, Tensor], layout: ModelLayout, num_blocks: int) -> dict[str, Tensor]:
    """Every tile of every tensor set to the tile at block 0 of each sliced axis (inside each segment
    of a segmented axis): the K x K copies of one sub-model that weighted broadcast drives the tiles
    toward (docs/algorithm.md#tiled-init). Unsliced tensors are kept; every tensor is a new copy."""
    out = {}
    for spec in layout.params:
        t = params[spec.name]
        for axis, g in spec.sliced_axes:
            d = layout.segment_size(g)
            if d % num_blocks:
                raise ValueError(f"{spec.name}: group {g} has {d} channels per segment, not divisible by "
                                 f"K = {num_blocks} blocks")
            blocked = t.unflatten(axis, (layout.segments(g), num_blocks, d // num_blocks))
            t = blocked.narrow(axis + 1, 0, 1).expand_as(blocked).flatten(axis, axis + 2)
        out[spec.name] = t.clone()
    return out


class InitFromLayout:
    """What the MLP, CNN and PreResNet families share: a seeded init from their layout's roles, and
    batch coupling exactly when their norm is static BatchNorm."""

    layout: ModelLayout
    norm: str

    @property
    def batch_coupled(self) -> bool:
        return self.norm == "bn"

    def init(self, generator: torch.Generator) -> dict[str, Tensor]:
        return init_params(self.layout, generator)
