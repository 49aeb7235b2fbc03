"""Model families as (layout, init, functional forward), built by `model.arch` through the registry;
any client model is a gather of the global one."""

from __future__ import annotations

import torch

from ..config import CNNConfig, ExperimentConfig, MLPConfig, PreResNetConfig, TransformerConfig
from ..seeding import STREAM_INIT, torch_generator
from .cnn import CNN
from .family import (
    FunctionalView,
    ModelFamily,
    StackedFamily,
    stacked_forward_of,
    vmapped_forward,
)
from .init import tile_first_block
from .layout import ModelLayout, ParamSpec, Role, extract, full_indices, gather_tensor
from .mlp import MLP
from .preresnet import PreResNet
from .registry import FAMILIES, build_family, register_family, registered_archs
from .transformer import Transformer

__all__ = ["CNN", "FAMILIES", "MLP", "FunctionalView", "ModelFamily", "ModelLayout", "ParamSpec", "PreResNet",
           "Role", "StackedFamily", "Transformer", "build_family", "build_model", "extract", "full_indices",
           "gather_tensor", "initial_params", "register_family", "registered_archs", "stacked_forward_of",
           "vmapped_forward"]

register_family("mlp", MLPConfig, MLP.from_config)
register_family("cnn", CNNConfig, CNN.from_config)
register_family("preresnet18", PreResNetConfig, PreResNet.from_config)
register_family("transformer", TransformerConfig, Transformer.from_config)


def build_model(cfg: ExperimentConfig, input_shape: tuple[int, ...], num_classes: int) -> ModelFamily:
    """The global model of an experiment. For fedavg_small the global model itself has width
    beta_min (docs/algorithm.md#extraction), so its groups are K times narrower here."""
    model = cfg.model.narrowed(cfg.num_blocks) if cfg.method.name == "fedavg_small" else cfg.model
    return build_family(model, input_shape, num_classes)


def initial_params(cfg: ExperimentConfig, model: ModelFamily) -> dict[str, torch.Tensor]:
    """The global model before round 1: the family's seeded init, with every tile made equal to its
    first block's under `method.init = "tiled"` (docs/algorithm.md#tiled-init)."""
    params = model.init(torch_generator(cfg.seed, STREAM_INIT))
    if cfg.method.init == "tiled":
        params = tile_first_block(params, model.layout, cfg.num_blocks)
    return params
