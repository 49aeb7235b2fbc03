"""HeteroFL-style CNN: [conv3x3 -> scaler -> norm -> ReLU (-> max-pool 2)] per hidden group,
global average pool, Linear to the classes. Every block but the last is followed by a pool."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from .functional import normalize, scale_activation
from .init import init_params
from .layout import ModelLayout, ParamSpec


class CNN:
    def __init__(self, in_channels: int, hidden: list[int], num_classes: int, *, norm: str = "bn",
                 norm_groups: int = 4, scaler: bool = True) -> None:
        self.in_channels, self.hidden, self.num_classes = in_channels, list(hidden), num_classes
        self.norm, self.norm_groups, self.scaler = norm, norm_groups, scaler
        specs: list[ParamSpec] = []
        fan_in, prev_group = in_channels, None
        for g, n in enumerate(hidden):
            specs.append(ParamSpec(f"hidden{g}.weight", (n, fan_in, 3, 3), (g, prev_group, None, None)))
            specs.append(ParamSpec(f"hidden{g}.bias", (n,), (g,)))
            if norm != "none":
                specs.append(ParamSpec(f"norm{g}.weight", (n,), (g,)))
                specs.append(ParamSpec(f"norm{g}.bias", (n,), (g,)))
            fan_in, prev_group = n, g
        specs.append(ParamSpec("out.weight", (num_classes, fan_in), (None, prev_group)))
        specs.append(ParamSpec("out.bias", (num_classes,), (None,)))
        self.layout = ModelLayout(tuple(hidden), tuple(specs))

    def init(self, generator: torch.Generator) -> dict[str, Tensor]:
        return init_params(self.layout, generator)

    def forward(self, params: Mapping[str, Tensor], x: Tensor, *, beta: float = 1.0, train: bool = False) -> Tensor:
        h = x
        last = len(self.hidden) - 1
        for g in range(len(self.hidden)):
            h = F.conv2d(h, params[f"hidden{g}.weight"], params[f"hidden{g}.bias"], padding=1)
            h = scale_activation(h, beta=beta, train=train, scaler=self.scaler)
            h = normalize(h, self.norm, params.get(f"norm{g}.weight"), params.get(f"norm{g}.bias"), self.norm_groups)
            h = F.relu(h)
            if g != last:
                h = F.max_pool2d(h, 2)
        h = h.mean(dim=(2, 3))
        return F.linear(h, params["out.weight"], params["out.bias"])

    def flops_per_sample(self, widths: list[int], spatial: tuple[int, int]) -> int:
        """Multiply-adds x2 of the conv and linear layers of one forward pass."""
        hgt, wid = spatial
        total, c_in = 0, self.in_channels
        for g, c_out in enumerate(widths):
            total += 2 * hgt * wid * c_out * c_in * 9
            if g != len(widths) - 1:
                hgt, wid = hgt // 2, wid // 2
            c_in = c_out
        return total + 2 * c_in * self.num_classes
