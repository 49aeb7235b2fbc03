"""Models as (layout, init, functional forward): any client model is a gather of the global one."""

from __future__ import annotations

import math

from ..config import ExperimentConfig
from .cnn import CNN
from .layout import ModelLayout, ParamSpec, extract, full_indices, gather_tensor
from .mlp import MLP

__all__ = ["CNN", "MLP", "Model", "ModelLayout", "ParamSpec", "build_model", "extract", "full_indices", "gather_tensor"]

Model = MLP | CNN


def build_model(cfg: ExperimentConfig, input_shape: tuple[int, ...], num_classes: int) -> Model:
    """The global model of an experiment. For fedavg_small the global model itself has width
    beta_min (docs/algorithm.md#extraction), so its hidden sizes are divided by K here."""
    hidden = cfg.model.hidden_sizes
    if cfg.method.name == "fedavg_small":
        hidden = [n // cfg.num_blocks for n in hidden]
    m = cfg.model
    if m.arch == "mlp":
        return MLP(math.prod(input_shape), hidden, num_classes, norm=m.norm, norm_groups=m.norm_groups,
                   scaler=m.scaler)
    if len(input_shape) != 3:
        raise ValueError(f"model.arch: the CNN needs (channels, height, width) inputs, got shape {input_shape}")
    return CNN(input_shape[0], hidden, num_classes, norm=m.norm, norm_groups=m.norm_groups, scaler=m.scaler)
