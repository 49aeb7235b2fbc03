"""MLP: input -> [Linear -> scaler -> norm -> ReLU] per hidden group -> (classifier scaler) -> Linear to the classes."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import pairwise

import torch.nn.functional as F
from torch import Tensor

from ..config import MLPConfig
from .family import ReluChain
from .functional import normalize, scale_activation
from .init import InitFromLayout
from .layout import chain_layout
from .stacked import LinearLayer, StackedLinear, plain_linear, stacked_normalize


class MLP(InitFromLayout):
    arch = "mlp"
    # The linear layer that reads the flattened input: forward_stacked passes x to it and to
    # nothing else, so a trainer may compute it from its own copy of the inputs.
    input_layer: str | None = "hidden0"

    def __init__(self, in_features: int, hidden: list[int], num_classes: int, *, norm: str = "none",
                 norm_groups: int = 4, scaler: bool = True, classifier_scaler: bool = False) -> None:
        self.in_features, self.hidden, self.num_classes = in_features, list(hidden), num_classes
        self.norm, self.norm_groups, self.scaler = norm, norm_groups, scaler
        self.classifier_scaler = classifier_scaler  # docs/algorithm.md#classifier-scaler
        self.layout = chain_layout(in_features, hidden, num_classes, norm)
        self.stacked_linears = {name: LinearLayer(f"{name}.weight", f"{name}.bias")
                                for name in [*(f"hidden{g}" for g in range(len(hidden))), "out"]}

    @classmethod
    def from_config(cls, cfg: MLPConfig, input_shape: tuple[int, ...], num_classes: int) -> MLP:
        return cls(math.prod(input_shape), cfg.hidden_sizes, num_classes, norm=cfg.norm, norm_groups=cfg.norm_groups,
                   scaler=cfg.scaler, classifier_scaler=bool(cfg.classifier_scaler))

    def relu_chain(self) -> ReluChain | None:
        # the client-major kernel scales hidden layers only: with the classifier scaler, the stacked path
        plain = self.norm == "none" and not self.classifier_scaler
        return ReluChain(tuple(self.stacked_linears.values()), self.scaler) if plain else None

    def forward(self, params: Mapping[str, Tensor], x: Tensor, *, beta: float = 1.0, train: bool = False,
                mask: Tensor | None = None) -> Tensor:
        h = x.flatten(1)
        for g in range(len(self.hidden)):
            h = F.linear(h, params[f"hidden{g}.weight"], params[f"hidden{g}.bias"])
            h = scale_activation(h, beta=beta, train=train, scaler=self.scaler)
            h = normalize(h, self.norm, params.get(f"norm{g}.weight"), params.get(f"norm{g}.bias"), self.norm_groups,
                          fused=not train, mask=mask)
            h = F.relu(h)
        h = scale_activation(h, beta=beta, train=train, scaler=self.classifier_scaler)
        return F.linear(h, params["out.weight"], params["out.bias"])

    def forward_stacked(self, params: Mapping[str, Tensor], x: Tensor, mask: Tensor, *, beta: float = 1.0,
                        train: bool = False, linear: StackedLinear | None = None) -> Tensor:
        """Clients stacked: params [n, ...], x [n, b, *input], mask [n, b] -> logits [n, b, classes].
        `linear(h, layer)` computes each linear layer (default: one batched GEMM)."""
        linear = linear or plain_linear(params, self.stacked_linears)
        h = x.flatten(2)
        for g in range(len(self.hidden)):
            h = linear(h, f"hidden{g}")
            h = scale_activation(h, beta=beta, train=train, scaler=self.scaler)
            h = stacked_normalize(h, self.norm, params.get(f"norm{g}.weight"), params.get(f"norm{g}.bias"),
                                  self.norm_groups, mask)
            h = F.relu(h)
        h = scale_activation(h, beta=beta, train=train, scaler=self.classifier_scaler)
        return linear(h, "out")

    def flops_per_sample(self, widths: Sequence[int], input_shape: tuple[int, ...]) -> int:
        """Multiply-adds x2 of one forward pass at the given hidden widths (the input is flat)."""
        dims = [self.in_features, *widths, self.num_classes]
        return 2 * sum(a * b for a, b in pairwise(dims))
