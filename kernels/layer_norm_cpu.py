"""LayerNorm without affine over the last dimension on the CPU, beside its plain-torch reference.

`layer_norm_reference` is torch's `F.layer_norm`. Over rows of 16-64 floats (the Transformer's
model dimension at widths 1/16-1/4) its CPU kernel spends more on each row's set-up than on the
row; `layer_norm_rows` runs csrc/layer_norm_cpu.cpp instead (float32; compiled on first use by
kernels/cpu_library.py). `layer_norm` picks between them: without a compiler, or with
FEDBRB_FAST_CPU_KERNELS=torch, it uses the reference and warns once.

All three take x [..., C] and eps and return x normalized over C (biased variance, as torch).

`layer_norm_and_shift(x, bias, eps)` (with `_reference` and `_rows`, the same dispatch) is the
residual stream's step: x [N, T, C] feeds a LayerNorm and, shifted by the next residual layer's
bias [N, C], the GEMM that will accumulate into it. It returns (LN(x), x + bias); the kernel writes
both in one pass, and its backward adds the shifted output's gradient to the norm's input gradient
(autograd would sum the two branches in a pass of its own) and sums it for the bias gradient.
"""

from __future__ import annotations

import ctypes
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from . import cpu_library

SOURCE = "layer_norm_cpu.cpp"
ROWS_PER_PART = 64  # rows per partial bias-gradient sum in the backward (threads split the parts)


def layer_norm_reference(x: Tensor, eps: float) -> Tensor:
    return F.layer_norm(x, (x.shape[-1],), eps=eps)


def layer_norm(x: Tensor, eps: float) -> Tensor:
    """The compiled kernel for float32 on the CPU where it is available, else the reference."""
    if cpu_library.use_kernel("layer norm", _unavailable, x):
        return layer_norm_rows(x, eps)
    return layer_norm_reference(x, eps)


def layer_norm_rows(x: Tensor, eps: float) -> Tensor:
    if x.dtype != torch.float32 or x.device.type != "cpu":
        raise ValueError(f"the layer norm kernel takes float32 CPU tensors; got {x.dtype} on {x.device}")
    if x.dim() == 0 or x.shape[-1] == 0:
        raise ValueError(f"layer norm needs a non-empty last dimension; got shape {tuple(x.shape)}")
    out: Tensor = _LayerNormRows.apply(x, eps)
    return out


def layer_norm_and_shift_reference(x: Tensor, bias: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    return layer_norm_reference(x, eps), x + bias.unsqueeze(1)


def layer_norm_and_shift(x: Tensor, bias: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """The compiled kernel for float32 on the CPU where it is available, else the reference."""
    if cpu_library.use_kernel("layer norm", _unavailable, x, bias):
        return layer_norm_and_shift_rows(x, bias, eps)
    return layer_norm_and_shift_reference(x, bias, eps)


def layer_norm_and_shift_rows(x: Tensor, bias: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    if x.dim() != 3 or bias.shape != (x.shape[0], x.shape[2]) or x.shape[2] == 0:
        raise ValueError(f"x must be [N, T, C] (C > 0) and bias [N, C]; got {tuple(x.shape)} and {tuple(bias.shape)}")
    if x.dtype != torch.float32 or bias.dtype != torch.float32 or x.device.type != "cpu" or bias.device != x.device:
        raise ValueError(f"the layer norm kernel takes float32 CPU tensors; got {x.dtype} on {x.device} and "
                         f"{bias.dtype} on {bias.device}")
    normed, shifted = _LayerNormAndShift.apply(x, bias, eps)
    return normed, shifted


def _unavailable() -> str | None:
    return cpu_library.unavailable(SOURCE)


@cache
def _library() -> ctypes.CDLL:
    lib = cpu_library.load(SOURCE)
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    forward: list[Any] = [ptr, ptr, ptr, i64, i64, ctypes.c_float, i64]
    lib.fedbrb_layer_norm_forward.argtypes, lib.fedbrb_layer_norm_forward.restype = forward, None
    lib.fedbrb_layer_norm_backward.argtypes = [ptr, ptr, ptr, ptr, i64, i64, i64]
    lib.fedbrb_layer_norm_backward.restype = None
    lib.fedbrb_layer_norm_shift_forward.argtypes = [ptr] * 5 + [i64] * 3 + [ctypes.c_float, i64]
    lib.fedbrb_layer_norm_shift_backward.argtypes = [ptr] * 6 + [i64] * 5
    lib.fedbrb_layer_norm_shift_forward.restype = lib.fedbrb_layer_norm_shift_backward.restype = None
    return lib


class _LayerNormRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, eps: float) -> Tensor:
        x = x.detach().contiguous()
        width = x.shape[-1]
        rows = x.numel() // width
        y, rstd = torch.empty_like(x), torch.empty(rows)
        _library().fedbrb_layer_norm_forward(x.data_ptr(), y.data_ptr(), rstd.data_ptr(), rows, width, eps,
                                             torch.get_num_threads())
        ctx.save_for_backward(y, rstd)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        y, rstd = ctx.saved_tensors
        grad = grad.contiguous()
        dx = torch.empty_like(y)
        _library().fedbrb_layer_norm_backward(y.data_ptr(), rstd.data_ptr(), grad.data_ptr(), dx.data_ptr(),
                                              rstd.numel(), y.shape[-1], torch.get_num_threads())
        return dx, None


class _LayerNormAndShift(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, bias: Tensor, eps: float) -> tuple[Tensor, Tensor]:
        x, bias = x.detach().contiguous(), bias.detach().contiguous()
        n, tokens, width = x.shape
        y, shifted, rstd = torch.empty_like(x), torch.empty_like(x), torch.empty(n * tokens)
        _library().fedbrb_layer_norm_shift_forward(x.data_ptr(), bias.data_ptr(), y.data_ptr(), shifted.data_ptr(),
                                                   rstd.data_ptr(), n, tokens, width, eps, torch.get_num_threads())
        ctx.save_for_backward(y, rstd)
        return y, shifted

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: Tensor, grad_shifted: Tensor) -> tuple[Tensor, Tensor, None]:
        y, rstd = ctx.saved_tensors
        grad_y, grad_shifted = grad_y.contiguous(), grad_shifted.contiguous()
        n, tokens, width = y.shape
        dx = torch.empty_like(y)
        parts = torch.empty(n, -(-tokens // ROWS_PER_PART), width)
        _library().fedbrb_layer_norm_shift_backward(y.data_ptr(), rstd.data_ptr(), grad_y.data_ptr(),
                                                    grad_shifted.data_ptr(), dx.data_ptr(), parts.data_ptr(), n,
                                                    tokens, width, ROWS_PER_PART, torch.get_num_threads())
        return dx, parts.sum(1), None
