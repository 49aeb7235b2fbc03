"""A test-only model family, the worked example of docs/adding_a_model.md: no hand-written stacked
forward (the batched engine vmaps its functional forward) and tensor names that no other family
uses, so any module that still guessed a role from a name would break on it.

    x -> enc (linear, group 0) -> scaler -> static BatchNorm (bn.gamma, bn.beta) -> ReLU
      -> mix (linear without bias, group 0 -> group 1) -> tanh -> head (linear to the classes)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from fedbrb_fast.config import FamilyConfig
from fedbrb_fast.models import ModelLayout, ParamSpec
from fedbrb_fast.models.functional import scale_activation, static_batch_norm
from fedbrb_fast.models.init import init_params


class TinyConfig(FamilyConfig):
    """The family's own [model] fields (a real family adds this class to config.ModelConfig)."""

    arch: Literal["tiny"] = "tiny"
    widths: tuple[int, int] = (8, 12)

    @property
    def group_sizes(self) -> list[int]:
        return list(self.widths)

    def narrowed(self, num_blocks: int) -> TinyConfig:
        return self.model_copy(update={"widths": tuple(n // num_blocks for n in self.widths)})


class TinyNet:
    arch = "tiny"

    def __init__(self, in_features: int, widths: Sequence[int], num_classes: int) -> None:
        self.in_features, self.num_classes = in_features, num_classes
        n0, n1 = widths
        self.layout = ModelLayout(
            group_sizes=(n0, n1),
            params=(
                ParamSpec("enc.w", (n0, in_features), (0, None), "weight", fan_in=in_features),
                ParamSpec("enc.b", (n0,), (0,), "bias", fan_in=in_features),
                ParamSpec("bn.gamma", (n0,), (0,), "norm_scale"),
                ParamSpec("bn.beta", (n0,), (0,), "norm_shift"),
                ParamSpec("mix.w", (n1, n0), (1, 0), "weight", fan_in=n0),
                ParamSpec("head.w", (num_classes, n1), (None, 1), "weight", fan_in=n1),
                ParamSpec("head.b", (num_classes,), (None,), "bias", fan_in=n1),
            ),
            classifier=("head.w", "head.b"),
        )

    @classmethod
    def from_config(cls, cfg: TinyConfig, input_shape: tuple[int, ...], num_classes: int) -> TinyNet:
        return cls(math.prod(input_shape), cfg.group_sizes, num_classes)

    @property
    def batch_coupled(self) -> bool:
        return True  # static BatchNorm

    def init(self, generator: torch.Generator) -> dict[str, Tensor]:
        return init_params(self.layout, generator)

    def forward(self, params: Mapping[str, Tensor], x: Tensor, *, beta: float = 1.0, train: bool = False,
                mask: Tensor | None = None) -> Tensor:
        h = F.linear(x.flatten(1), params["enc.w"], params["enc.b"])
        h = scale_activation(h, beta=beta, train=train, scaler=True)
        h = F.relu(static_batch_norm(h, params["bn.gamma"], params["bn.beta"], mask=mask))
        h = torch.tanh(F.linear(h, params["mix.w"]))
        return F.linear(h, params["head.w"], params["head.b"])

    def flops_per_sample(self, widths: Sequence[int], input_shape: tuple[int, ...]) -> int:
        n0, n1 = widths
        return 2 * (self.in_features * n0 + n0 * n1 + n1 * self.num_classes)
