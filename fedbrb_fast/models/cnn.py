"""HeteroFL-style CNN: [conv3x3 -> scaler -> norm -> ReLU (-> max-pool 2)] per hidden group,
global average pool, Linear to the classes. Every block but the last is followed by a pool."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import CNNConfig
from .functional import normalize, scale_activation
from .init import InitFromLayout
from .layout import chain_layout
from .stacked import LinearLayer, StackedLinear, grouped_normalize, plain_linear


class CNN(InitFromLayout):
    arch = "cnn"
    input_layer: str | None = None  # the input goes to a convolution (see MLP.input_layer)

    def __init__(self, in_channels: int, hidden: list[int], num_classes: int, *, norm: str = "bn",
                 norm_groups: int = 4, scaler: bool = True) -> None:
        self.in_channels, self.hidden, self.num_classes = in_channels, list(hidden), num_classes
        self.norm, self.norm_groups, self.scaler = norm, norm_groups, scaler
        self.layout = chain_layout(in_channels, hidden, num_classes, norm, kernel=(3, 3))
        self.stacked_linears = {"out": LinearLayer("out.weight", "out.bias")}

    @classmethod
    def from_config(cls, cfg: CNNConfig, input_shape: tuple[int, ...], num_classes: int) -> CNN:
        if len(input_shape) != 3:
            raise ValueError(f"model.arch: the CNN needs (channels, height, width) inputs, got shape {input_shape}")
        return cls(input_shape[0], cfg.hidden_sizes, num_classes, norm=cfg.norm, norm_groups=cfg.norm_groups,
                   scaler=cfg.scaler)

    def forward(self, params: Mapping[str, Tensor], x: Tensor, *, beta: float = 1.0, train: bool = False,
                mask: Tensor | None = None) -> Tensor:
        h = x
        last = len(self.hidden) - 1
        for g in range(len(self.hidden)):
            h = F.conv2d(h, params[f"hidden{g}.weight"], params[f"hidden{g}.bias"], padding=1)
            h = scale_activation(h, beta=beta, train=train, scaler=self.scaler)
            h = normalize(h, self.norm, params.get(f"norm{g}.weight"), params.get(f"norm{g}.bias"), self.norm_groups,
                          fused=not train, mask=mask)
            h = F.relu(h)
            if g != last:
                h = F.max_pool2d(h, 2)
        h = h.mean(dim=(2, 3))
        return F.linear(h, params["out.weight"], params["out.bias"])

    def forward_stacked(self, params: Mapping[str, Tensor], x: Tensor, mask: Tensor, *, beta: float = 1.0,
                        train: bool = False, linear: StackedLinear | None = None) -> Tensor:
        """Clients stacked: params [n, ...], x [n, b, C, H, W], mask [n, b] -> logits [n, b, classes].

        Clients sit side by side in the channels, [b, n*C, H, W], stored channels-last (the CPU
        kernels of grouped convolution, BatchNorm and max-pool are several times faster there than
        on NCHW with few channels per client): convolutions run as one grouped conv (groups =
        clients), static BatchNorm of full batches and GroupNorm as the native kernels over the
        clients' channels, and the scaler multiplies the conv weights instead of the activations.
        `linear(h, layer)` computes the classifier (default: one batched GEMM)."""
        linear = linear or plain_linear(params, self.stacked_linears)
        n, b = x.shape[:2]
        h = x.transpose(0, 1).reshape(b, -1, *x.shape[3:]).contiguous(memory_format=torch.channels_last)
        scale = 1.0 / beta if self.scaler and train and beta != 1.0 else None
        full = bool(mask.all())
        last = len(self.hidden) - 1
        for g in range(len(self.hidden)):
            w, bias = params[f"hidden{g}.weight"], params[f"hidden{g}.bias"]
            if scale is not None:
                w, bias = w * scale, bias * scale
            h = F.conv2d(h, w.reshape(-1, *w.shape[2:]), bias.reshape(-1), padding=1, groups=n)
            if self.norm != "none":
                h = grouped_normalize(h, n, self.norm, params[f"norm{g}.weight"], params[f"norm{g}.bias"],
                                      self.norm_groups, mask, full_batches=full)
            # ReLU and max-pool commute (both monotone); pooling first gives ReLU a quarter of the work.
            h = F.relu(F.max_pool2d(h, 2)) if g != last else F.relu(h)
        h = h.mean(dim=(2, 3)).view(b, n, -1).transpose(0, 1)
        return linear(h, "out")

    def flops_per_sample(self, widths: Sequence[int], input_shape: tuple[int, ...]) -> int:
        """Multiply-adds x2 of the conv and linear layers of one forward pass on (C, H, W) inputs."""
        hgt, wid = input_shape[-2:]
        total, c_in = 0, self.in_channels
        for g, c_out in enumerate(widths):
            total += 2 * hgt * wid * c_out * c_in * 9
            if g != len(widths) - 1:
                hgt, wid = hgt // 2, wid // 2
            c_in = c_out
        return total + 2 * c_in * self.num_classes
