"""LayerNorm without affine over the last dimension on the CPU, beside its plain-torch reference.

`layer_norm_reference` is torch's `F.layer_norm`. Over rows of 16-64 floats (the Transformer's
model dimension at widths 1/16-1/4) its CPU kernel spends more on each row's set-up than on the
row; `layer_norm_rows` runs csrc/layer_norm_cpu.cpp instead (float32; compiled on first use by
kernels/cpu_library.py). `layer_norm` picks between them: without a compiler, or with
FEDBRB_FAST_CPU_KERNELS=torch, it uses the reference and warns once.

All three take x [..., C] and eps and return x normalized over C (biased variance, as torch).
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


def layer_norm_reference(x: Tensor, eps: float) -> Tensor:
    return F.layer_norm(x, (x.shape[-1],), eps=eps)


def layer_norm(x: Tensor, eps: float) -> Tensor:
    """The compiled kernel for float32 on the CPU where it is available, else the reference."""
    if not (x.device.type == "cpu" and x.dtype == torch.float32):
        return layer_norm_reference(x, eps)
    reason = cpu_library.unavailable(SOURCE)
    if reason is not None:
        cpu_library.warn_fallback("layer norm", reason)
        return layer_norm_reference(x, eps)
    return layer_norm_rows(x, eps)


def layer_norm_rows(x: Tensor, eps: float) -> Tensor:
    if x.dtype != torch.float32 or x.device.type != "cpu":
        raise ValueError(f"the layer norm kernel takes float32 CPU tensors; got {x.dtype} on {x.device}")
    if x.dim() == 0 or x.shape[-1] == 0:
        raise ValueError(f"layer norm needs a non-empty last dimension; got shape {tuple(x.shape)}")
    out: Tensor = _LayerNormRows.apply(x, eps)
    return out


@cache
def _library() -> ctypes.CDLL:
    lib = cpu_library.load(SOURCE)
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    forward: list[Any] = [ptr, ptr, ptr, i64, i64, ctypes.c_float, i64]
    lib.fedbrb_layer_norm_forward.argtypes, lib.fedbrb_layer_norm_forward.restype = forward, None
    lib.fedbrb_layer_norm_backward.argtypes = [ptr, ptr, ptr, ptr, i64, i64, i64]
    lib.fedbrb_layer_norm_backward.restype = None
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
