"""PreResNet-18 as HeteroFL and FedRolex define it for CIFAR (docs/algorithm.md#model-families).

A 3x3 stem convolution, four stages of two pre-activation basic blocks (widths [64, 128, 256,
512] at width 1; stride 2 from the second stage on), then the final norm, ReLU, global average
pool and a linear classifier. A block computes

    a = ReLU(norm1(scaler(h)));  out = conv2(ReLU(norm2(scaler(conv1(a))))) + shortcut

with the identity as shortcut, or a 1x1 convolution of `a` where the block changes width or stride.
Convolutions have no bias. The scaler (divide by beta while training) comes before every norm.

Channel groups (SPEC 2): every stage's residual stream is one group (the stem's output, each
block's conv2 output and shortcut, the norms that read it), and each block's inner channels
(conv1 output, norm2) are a group of their own. Streams of consecutive stages are adjacent through
the shortcut convolution, so the layout is not a chain.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from ..config import PreResNetConfig
from .functional import normalize, scale_activation
from .init import InitFromLayout
from .layout import ModelLayout, ParamSpec
from .preresnet_stacked import LINEARS, pointwise_conv, preresnet_forward_stacked
from .stacked import StackedLinear

NUM_STAGES = 4
BLOCKS_PER_STAGE = 2
GROUPS_PER_STAGE = 1 + BLOCKS_PER_STAGE  # its stream and its blocks' inner groups


@dataclass(frozen=True)
class Block:
    """One basic block: its parameter prefix, the groups it reads and writes, its stride."""

    prefix: str
    stage: int
    in_stream: int
    inner: int
    out_stream: int
    stride: int

    @property
    def has_shortcut_conv(self) -> bool:
        return self.stride != 1 or self.in_stream != self.out_stream


def blocks(num_stages: int) -> list[Block]:
    """Blocks in network order. Groups are numbered in network order, by the first tensor that
    writes them: stream 0 (the stem), then per block its inner group and, where a stage begins, the
    new stream its conv2 and shortcut write."""
    out: list[Block] = []
    stream, groups = 0, 1
    for s in range(num_stages):
        for j in range(BLOCKS_PER_STAGE):
            first = j == 0 and s > 0
            inner, groups = groups, groups + 1
            new_stream = groups if first else stream
            groups += first
            out.append(Block(f"stage{s}.block{j}", s, stream, inner, new_stream, 2 if first else 1))
            stream = new_stream
    return out


def group_widths(widths: Sequence[int]) -> list[int]:
    """N_g of every group in group order: each block's groups have its stage's width."""
    sizes = [widths[0]]
    for b in blocks(len(widths)):
        sizes += [widths[b.stage]] * (1 + (b.out_stream != b.in_stream))
    return sizes


def preresnet_layout(in_channels: int, widths: Sequence[int], num_classes: int, norm: str) -> ModelLayout:
    """Group sizes in group order and the parameter specs, with their roles and fan-ins."""
    sizes = group_widths(widths)
    specs = [ParamSpec("stem.weight", (widths[0], in_channels, 3, 3), (0, None, None, None), "weight",
                       in_channels * 9)]

    def norm_specs(prefix: str, group: int) -> list[ParamSpec]:
        if norm == "none":
            return []
        return [ParamSpec(f"{prefix}.weight", (sizes[group],), (group,), "norm_scale"),
                ParamSpec(f"{prefix}.bias", (sizes[group],), (group,), "norm_shift")]

    for b in blocks(len(widths)):
        c_in, c_mid, c_out = sizes[b.in_stream], sizes[b.inner], sizes[b.out_stream]
        specs += norm_specs(f"{b.prefix}.norm1", b.in_stream)
        specs.append(ParamSpec(f"{b.prefix}.conv1.weight", (c_mid, c_in, 3, 3), (b.inner, b.in_stream, None, None),
                               "weight", c_in * 9))
        specs += norm_specs(f"{b.prefix}.norm2", b.inner)
        specs.append(ParamSpec(f"{b.prefix}.conv2.weight", (c_out, c_mid, 3, 3), (b.out_stream, b.inner, None, None),
                               "weight", c_mid * 9))
        if b.has_shortcut_conv:
            specs.append(ParamSpec(f"{b.prefix}.shortcut.weight", (c_out, c_in, 1, 1),
                                   (b.out_stream, b.in_stream, None, None), "weight", c_in))
    last = blocks(len(widths))[-1].out_stream
    specs += norm_specs("final_norm", last)
    specs.append(ParamSpec("out.weight", (num_classes, sizes[last]), (None, last), "weight", sizes[last]))
    specs.append(ParamSpec("out.bias", (num_classes,), (None,), "bias", sizes[last]))
    return ModelLayout(tuple(sizes), tuple(specs), classifier=("out.weight", "out.bias"))


def preresnet_forward(params: Mapping[str, Tensor], x: Tensor, *, num_stages: int, norm: str, norm_groups: int,
                      scaler: bool, beta: float = 1.0, train: bool = False, mask: Tensor | None = None) -> Tensor:
    """Logits [b, classes] of images x [b, C, H, W]; `mask` [b] marks the real samples of a padded
    batch, which alone enter BatchNorm's statistics."""
    def pre_activation(h: Tensor, prefix: str) -> Tensor:
        h = scale_activation(h, beta=beta, train=train, scaler=scaler)
        return F.relu(normalize(h, norm, params.get(f"{prefix}.weight"), params.get(f"{prefix}.bias"), norm_groups,
                                fused=not train, mask=mask))

    h = F.conv2d(x, params["stem.weight"], padding=1)
    for b in blocks(num_stages):
        a = pre_activation(h, f"{b.prefix}.norm1")
        shortcut = pointwise_conv(a, params[f"{b.prefix}.shortcut.weight"], b.stride) if b.has_shortcut_conv else h
        out = F.conv2d(a, params[f"{b.prefix}.conv1.weight"], stride=b.stride, padding=1)
        out = F.conv2d(pre_activation(out, f"{b.prefix}.norm2"), params[f"{b.prefix}.conv2.weight"], padding=1)
        h = out + shortcut
    h = pre_activation(h, "final_norm").mean(dim=(2, 3))
    return F.linear(h, params["out.weight"], params["out.bias"])


def preresnet_flops_per_sample(in_channels: int, group_sizes: Sequence[int], num_classes: int,
                               spatial: tuple[int, int]) -> int:
    """Multiply-adds x2 of the convolutions and the classifier of one forward pass with the groups
    at `group_sizes` channels (network order, as `group_widths` lists them)."""
    num_stages = len(group_sizes) // GROUPS_PER_STAGE
    hgt, wid = spatial
    total = 2 * hgt * wid * group_sizes[0] * in_channels * 9
    for b in blocks(num_stages):
        if b.stride != 1:
            hgt, wid = (hgt + 1) // 2, (wid + 1) // 2
        c_in, c_mid, c_out = group_sizes[b.in_stream], group_sizes[b.inner], group_sizes[b.out_stream]
        total += 2 * hgt * wid * (c_mid * c_in * 9 + c_out * c_mid * 9 + (c_out * c_in if b.has_shortcut_conv else 0))
    return total + 2 * group_sizes[blocks(num_stages)[-1].out_stream] * num_classes


class PreResNet(InitFromLayout):
    """The PreResNet-18 family (`model.arch = "preresnet18"`): four stages of stage widths
    `widths`, each group's channels as `group_widths(widths)` lists them."""

    arch = "preresnet18"
    stacked_linears = LINEARS  # the classifier, whose update the batched trainer fuses
    input_layer: str | None = None  # the input goes to a convolution

    def __init__(self, in_channels: int, widths: Sequence[int], num_classes: int, *, norm: str = "bn",
                 norm_groups: int = 4, scaler: bool = True) -> None:
        if len(widths) != NUM_STAGES:
            raise ValueError(f"model.widths: PreResNet-18 has {NUM_STAGES} stages, got {len(widths)} widths")
        self.in_channels, self.widths, self.num_classes = in_channels, list(widths), num_classes
        self.norm, self.norm_groups, self.scaler = norm, norm_groups, scaler
        self.layout = preresnet_layout(in_channels, widths, num_classes, norm)

    @classmethod
    def from_config(cls, cfg: PreResNetConfig, input_shape: tuple[int, ...], num_classes: int) -> PreResNet:
        if len(input_shape) != 3:
            raise ValueError(f"model.arch: PreResNet-18 needs (channels, height, width) inputs, got {input_shape}")
        return cls(input_shape[0], cfg.widths, num_classes, norm=cfg.norm, norm_groups=cfg.norm_groups,
                   scaler=cfg.scaler)

    def forward(self, params: Mapping[str, Tensor], x: Tensor, *, beta: float = 1.0, train: bool = False,
                mask: Tensor | None = None) -> Tensor:
        return preresnet_forward(params, x, num_stages=len(self.widths), norm=self.norm, norm_groups=self.norm_groups,
                                 scaler=self.scaler, beta=beta, train=train, mask=mask)

    def forward_stacked(self, params: Mapping[str, Tensor], x: Tensor, mask: Tensor, *, beta: float = 1.0,
                        train: bool = False, linear: StackedLinear | None = None) -> Tensor:
        """Clients stacked (models/preresnet_stacked.py): params [n, ...], x [n, b, C, H, W],
        mask [n, b] -> logits [n, b, classes]."""
        return preresnet_forward_stacked(params, x, mask, blocks(len(self.widths)), norm=self.norm,
                                         norm_groups=self.norm_groups, scaler=self.scaler, beta=beta, train=train,
                                         linear=linear)

    def flops_per_sample(self, widths: Sequence[int], input_shape: tuple[int, ...]) -> int:
        """`widths`: the channels of every group (network order), as for every family."""
        hgt, wid = input_shape[-2:]
        return preresnet_flops_per_sample(self.in_channels, widths, self.num_classes, (hgt, wid))
