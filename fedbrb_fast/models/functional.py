"""Stateless building blocks shared by the models: scaler and the three norm options."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

BN_EPS = 1e-5


def scale_activation(h: Tensor, *, beta: float, train: bool, scaler: bool) -> Tensor:
    """HeteroFL's scaler: divide by the width ratio while training; identity at evaluation."""
    return h / beta if (scaler and train and beta != 1.0) else h


def static_batch_norm(h: Tensor, weight: Tensor, bias: Tensor, *, fused: bool = False,
                      mask: Tensor | None = None) -> Tensor:
    """BatchNorm with batch statistics in training and evaluation, no running stats.

    Written out (instead of F.batch_norm) so a batch of one sample normalizes to the bias
    rather than raising: short last batches are allowed. `fused` uses F.batch_norm where every
    channel has more than one value: the same statistics in one kernel, rounded differently, so
    it serves evaluation only and training keeps the exact arithmetic every engine reproduces.
    `mask` [b] (bool): the statistics come from the marked samples only (a padded batch).
    """
    dims = [0, *range(2, h.dim())]
    shape = [1, -1] + [1] * (h.dim() - 2)
    if mask is not None:
        m = mask.to(h.dtype).view(-1, *([1] * (h.dim() - 1)))
        count = (m.sum() * math.prod(h.shape[2:])).clamp_min(1)
        mean = (h * m).sum(dim=dims, keepdim=True) / count
        centred = h - mean
        var = (centred.square() * m).sum(dim=dims, keepdim=True) / count
        return centred * (var + BN_EPS).rsqrt() * weight.view(shape) + bias.view(shape)
    if fused and h.numel() > h.shape[1]:
        return F.batch_norm(h, None, None, weight, bias, training=True, eps=BN_EPS)
    mean = h.mean(dim=dims, keepdim=True)
    var = h.var(dim=dims, unbiased=False, keepdim=True)
    return (h - mean) * (var + BN_EPS).rsqrt() * weight.view(shape) + bias.view(shape)


def group_norm(h: Tensor, weight: Tensor, bias: Tensor, groups: int) -> Tensor:
    """GroupNorm written out: F.group_norm refuses a one-sample batch of vectors ([1, C])."""
    grouped = h.reshape(h.shape[0], groups, -1)
    var, mean = torch.var_mean(grouped, dim=2, keepdim=True, correction=0)
    shape = [1, -1] + [1] * (h.dim() - 2)
    normed = ((grouped - mean) * (var + BN_EPS).rsqrt()).reshape(h.shape)
    return normed * weight.view(shape) + bias.view(shape)


def norm_affine(kind: str, weight: Tensor | None, bias: Tensor | None) -> tuple[Tensor, Tensor]:
    """The affine parameters a "bn" or "gn" norm needs (the layout gives every such norm both)."""
    if kind not in ("bn", "gn"):
        raise ValueError(f"unknown norm {kind!r}")
    if weight is None or bias is None:
        raise ValueError(f"norm {kind!r} needs both a weight and a bias tensor")
    return weight, bias


def normalize(h: Tensor, kind: str, weight: Tensor | None, bias: Tensor | None, groups: int, *,
              fused: bool = False, mask: Tensor | None = None) -> Tensor:
    """`fused`: faster kernels where they round differently (evaluation; see static_batch_norm).
    `mask` [b]: real samples of a padded batch (BatchNorm statistics; GroupNorm is per sample)."""
    if kind == "none":
        return h
    weight, bias = norm_affine(kind, weight, bias)
    if kind == "bn":
        return static_batch_norm(h, weight, bias, fused=fused, mask=mask)
    return group_norm(h, weight, bias, groups)
