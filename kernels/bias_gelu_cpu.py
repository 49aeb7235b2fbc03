"""GELU of a GEMM's output plus its bias on the CPU, beside its plain-torch reference.

`bias_gelu_reference(x, bias)` is `F.gelu(x + bias)` (exact, erf-based GELU) for x [N, T, C] and a
bias per group of rows, bias [N, C] (the Transformer's MLP: N clients, T tokens). `bias_gelu_fused`
runs csrc/bias_gelu_cpu.cpp (float32; compiled on first use by kernels/cpu_library.py): the bias is
added inside the activation, so the GEMM before it writes no bias broadcast, and the backward sums
the bias gradient while it writes the input gradient. `bias_gelu` picks between them: without a
compiler, or with FEDBRB_FAST_CPU_KERNELS=torch, it uses the reference and warns once.
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

SOURCE = "bias_gelu_cpu.cpp"
ROWS_PER_PART = 64  # rows per partial bias-gradient sum in the backward (threads split the parts)


def bias_gelu_reference(x: Tensor, bias: Tensor) -> Tensor:
    return F.gelu(x + bias.unsqueeze(1))


def bias_gelu(x: Tensor, bias: Tensor) -> Tensor:
    """The compiled kernel for float32 on the CPU where it is available, else the reference."""
    if cpu_library.use_kernel("bias + GELU", _unavailable, x, bias):
        return bias_gelu_fused(x, bias)
    return bias_gelu_reference(x, bias)


def bias_gelu_fused(x: Tensor, bias: Tensor) -> Tensor:
    if x.dim() != 3 or bias.shape != (x.shape[0], x.shape[2]):
        raise ValueError(f"x must be [N, T, C] and bias [N, C]; got {tuple(x.shape)} and {tuple(bias.shape)}")
    if x.dtype != torch.float32 or bias.dtype != torch.float32 or x.device.type != "cpu" or bias.device != x.device:
        raise ValueError(f"the bias + GELU kernel takes float32 CPU tensors; got {x.dtype} on {x.device} and "
                         f"{bias.dtype} on {bias.device}")
    out: Tensor = _BiasGelu.apply(x, bias)
    return out


def _unavailable() -> str | None:
    return cpu_library.unavailable(SOURCE)


@cache
def _library() -> ctypes.CDLL:
    lib = cpu_library.load(SOURCE)
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.fedbrb_bias_gelu_forward.argtypes = [ptr, ptr, ptr, i64, i64, i64, i64]
    lib.fedbrb_bias_gelu_backward.argtypes = [ptr, ptr, ptr, ptr, ptr, i64, i64, i64, i64, i64]
    lib.fedbrb_bias_gelu_forward.restype = lib.fedbrb_bias_gelu_backward.restype = None
    return lib


class _BiasGelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, bias: Tensor) -> Tensor:
        x, bias = x.detach().contiguous(), bias.detach().contiguous()
        y = torch.empty_like(x)
        _library().fedbrb_bias_gelu_forward(x.data_ptr(), bias.data_ptr(), y.data_ptr(), *x.shape,
                                            torch.get_num_threads())
        ctx.save_for_backward(x, bias)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:
        x, bias = ctx.saved_tensors
        grad = grad.contiguous()
        n, tokens, width = x.shape
        dx = torch.empty_like(x)
        parts = torch.empty(n, -(-tokens // ROWS_PER_PART), width)
        _library().fedbrb_bias_gelu_backward(x.data_ptr(), bias.data_ptr(), grad.data_ptr(), dx.data_ptr(),
                                             parts.data_ptr(), n, tokens, width, ROWS_PER_PART,
                                             torch.get_num_threads())
        return dx, parts.sum(1)
