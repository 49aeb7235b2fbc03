"""Seeded initialization of a global model from its layout."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .layout import ModelLayout


def init_params(layout: ModelLayout, generator: torch.Generator) -> dict[str, Tensor]:
    """PyTorch's default Linear/Conv init (uniform in +-1/sqrt(fan_in) for weights and biases);
    norm scales 1 and shifts 0. Drawn in layout order from one generator, so it is reproducible."""
    params: dict[str, Tensor] = {}
    fan_in_of: dict[str, int] = {}
    for spec in layout.params:
        layer, kind = spec.name.rsplit(".", 1)
        if layer.startswith("norm"):
            params[spec.name] = torch.ones(spec.shape) if kind == "weight" else torch.zeros(spec.shape)
            continue
        if kind == "weight":
            fan_in_of[layer] = math.prod(spec.shape[1:])
        bound = 1.0 / math.sqrt(fan_in_of[layer])
        params[spec.name] = (torch.rand(spec.shape, generator=generator) * 2 - 1) * bound
    return params
