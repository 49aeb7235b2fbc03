"""PreResNet-18 over stacked clients (models/preresnet.py computes one client; this computes n).

Clients sit side by side in the channels, [b, n*C, H, W], stored channels-last, as the CNN's
stacked forward does (models/cnn.py): every convolution is one grouped conv (groups = clients),
and static BatchNorm of full batches and GroupNorm run as the native kernels over the clients'
channels (two passes forward and two backward instead of the written-out norm's dozen).

The scaler before a norm is folded into the norm's epsilon: for a scalar beta,
norm(h / beta) = (h - mean) / sqrt(var + eps * beta^2) exactly (the scale cancels in the
normalization), so no activation is divided. Batches with padding, and norms over a single value,
take the written-out masked statistics (models/stacked.py) on explicitly scaled activations.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from .functional import BN_EPS, norm_affine
from .stacked import LinearLayer, StackedLinear, plain_linear, stacked_normalize

LINEARS = {"out": LinearLayer("out.weight", "out.bias")}


class ResidualBlock(Protocol):
    """A pre-activation block as models/preresnet.py describes it (its `Block`)."""

    @property
    def prefix(self) -> str: ...

    @property
    def stride(self) -> int: ...

    @property
    def has_shortcut_conv(self) -> bool: ...


def grouped_conv(h: Tensor, weight: Tensor, clients: int, *, stride: int = 1, padding: int = 0) -> Tensor:
    """Every client's conv at once: h [b, n*C_in, H, W], weight [n, C_out, C_in, k, k]."""
    if weight.shape[-2:] == (1, 1) and padding == 0:
        return pointwise_conv(h, weight.reshape(-1, *weight.shape[2:]), stride, groups=clients)
    return F.conv2d(h, weight.reshape(-1, *weight.shape[2:]), stride=stride, padding=padding, groups=clients)


def pointwise_conv(h: Tensor, weight: Tensor, stride: int, *, groups: int = 1) -> Tensor:
    """A 1x1 convolution with `stride` as the stride-1 convolution of every stride-th pixel (the
    same numbers): oneDNN's backward of a strided 1x1 convolution over a few channels hangs or
    corrupts the heap on AVX2 hosts (torch 2.13, oneDNN 3.12, AMD EPYC; docs/batched_engine.md),
    and its stride-1 kernels do not."""
    return F.conv2d(h[:, :, ::stride, ::stride] if stride != 1 else h, weight, groups=groups)


def scaled_norm(h: Tensor, clients: int, kind: str, weight: Tensor | None, bias: Tensor | None, groups: int,
                mask: Tensor, *, scale: float | None, full_batches: bool) -> Tensor:
    """norm(h * scale) of clients side by side in the channels, h [b, n*C, H, W] (`scale` None: no
    scaler). The native kernels run where every statistic spans more than one value and, for
    BatchNorm, no sample is padding; otherwise the written-out (masked) norm of models/stacked.py,
    which outputs a norm over one value as exactly its shift, as the reference does (the fused
    kernels round it, and ReLU's kink then decides the gradient differently)."""
    if kind == "none":
        return h if scale is None else h * scale
    weight, bias = norm_affine(kind, weight, bias)
    eps = BN_EPS / (scale * scale) if scale is not None else BN_EPS
    spatial = math.prod(h.shape[2:])
    if kind == "gn" and h.shape[1] // (clients * groups) * spatial > 1:
        return F.group_norm(h, clients * groups, weight.reshape(-1), bias.reshape(-1), eps=eps)
    if kind == "bn" and full_batches and h.shape[0] * spatial > 1:
        return F.batch_norm(h, None, None, weight.reshape(-1), bias.reshape(-1), training=True, eps=eps)
    scaled = h if scale is None else h * scale
    per_client = scaled.reshape(h.shape[0], clients, -1, *h.shape[2:]).transpose(0, 1)
    out = stacked_normalize(per_client, kind, weight, bias, groups, mask).transpose(0, 1).reshape(h.shape)
    return out.contiguous(memory_format=torch.channels_last)


def preresnet_forward_stacked(params: Mapping[str, Tensor], x: Tensor, mask: Tensor, blocks: Sequence[ResidualBlock],
                              *, norm: str, norm_groups: int, scaler: bool, beta: float = 1.0, train: bool = False,
                              linear: StackedLinear | None = None) -> Tensor:
    """Clients stacked: params [n, ...], x [n, b, C, H, W], mask [n, b] -> logits [n, b, classes],
    through `blocks` in network order. `linear(h, "out")` computes the classifier (default: one
    batched GEMM)."""
    linear = linear or plain_linear(params, LINEARS)
    n, b = x.shape[:2]
    scale = 1.0 / beta if scaler and train and beta != 1.0 else None
    full = bool(mask.all())

    def pre_activation(h: Tensor, prefix: str) -> Tensor:
        return F.relu(scaled_norm(h, n, norm, params.get(f"{prefix}.weight"), params.get(f"{prefix}.bias"),
                                  norm_groups, mask, scale=scale, full_batches=full))

    h = x.transpose(0, 1).reshape(b, -1, *x.shape[3:]).contiguous(memory_format=torch.channels_last)
    h = grouped_conv(h, params["stem.weight"], n, padding=1)
    for blk in blocks:
        a = pre_activation(h, f"{blk.prefix}.norm1")
        shortcut = (grouped_conv(a, params[f"{blk.prefix}.shortcut.weight"], n, stride=blk.stride)
                    if blk.has_shortcut_conv else h)
        out = grouped_conv(a, params[f"{blk.prefix}.conv1.weight"], n, stride=blk.stride, padding=1)
        out = grouped_conv(pre_activation(out, f"{blk.prefix}.norm2"), params[f"{blk.prefix}.conv2.weight"], n,
                           padding=1)
        h = out + shortcut
    h = pre_activation(h, "final_norm").mean(dim=(2, 3)).view(b, n, -1).transpose(0, 1)
    return linear(h, "out")
