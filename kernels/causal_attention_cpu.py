"""Causal attention on the CPU for small head dimensions, beside its plain-torch reference.

`causal_attention_reference` is PyTorch's fused `scaled_dot_product_attention`. At head dimension
4 (a Transformer's heads at width 1/8) it took about 70% of a batched round, because its kernel
vectorizes along the head dimension. `causal_attention_lanes` runs csrc/causal_attention_cpu.cpp
instead: each SIMD lane is one (sequence, head) pair. It is float32 only, for head dimensions
HEAD_DIMS. `causal_attention` picks between them.

The C++ source is compiled on first use (kernels/cpu_library.py). Without a compiler, or with
FEDBRB_FAST_CPU_ATTENTION=sdpa (or FEDBRB_FAST_CPU_KERNELS=torch), `causal_attention` uses the
reference and warns once.

All three take qkv [S, L, 3 * H * D] (S sequences, L positions; q, k and v concatenated along the
last dimension, as one GEMM computes them, each [H heads, D]), the number of heads H, and an
optional bias [G, 3 * H * D] added to the qkv of sequence s from row s // (S / G) (a bias per
client of G, each with S / G sequences); they return the heads' outputs [S, L, H * D].
"""

from __future__ import annotations

import ctypes
import math
import os
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from . import cpu_library

SOURCE = "causal_attention_cpu.cpp"
HEAD_DIMS = (2, 4, 8)  # where the lanes kernel beats the reference (bench/bench_attention.py)
ENV_SWITCH = "FEDBRB_FAST_CPU_ATTENTION"  # "sdpa": always the reference


def causal_attention_reference(qkv: Tensor, heads: int, bias: Tensor | None = None) -> Tensor:
    s, length, width = _check_qkv(qkv, heads, bias)
    if bias is not None:
        groups = bias.shape[0]
        qkv = (qkv.view(groups, s // groups, length, width) + bias.view(groups, 1, 1, width)).view(s, length, width)
    q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [S, H, L, D]
    return out.transpose(1, 2).reshape(s, length, width // 3)


def causal_attention(qkv: Tensor, heads: int, bias: Tensor | None = None) -> Tensor:
    """The lanes kernel where it applies (CPU, float32, head dimension in HEAD_DIMS, a compiled
    library), else the reference."""
    _, _, width = _check_qkv(qkv, heads, bias)
    tensors = (qkv,) if bias is None else (qkv, bias)
    if width // (3 * heads) in HEAD_DIMS and cpu_library.use_kernel("causal attention", lanes_unavailable, *tensors):
        return causal_attention_lanes(qkv, heads, bias)
    return causal_attention_reference(qkv, heads, bias)


def causal_attention_lanes(qkv: Tensor, heads: int, bias: Tensor | None = None) -> Tensor:
    _, _, width = _check_qkv(qkv, heads, bias)
    if qkv.dtype != torch.float32 or qkv.device.type != "cpu" or (
            bias is not None and (bias.dtype != torch.float32 or bias.device.type != "cpu")):
        raise ValueError(f"the lanes kernel takes float32 CPU tensors; got qkv {qkv.dtype} on {qkv.device}"
                         + ("" if bias is None else f", bias {bias.dtype} on {bias.device}"))
    if width // (3 * heads) not in HEAD_DIMS:
        raise ValueError(f"the lanes kernel is compiled for head dimensions {HEAD_DIMS}, not {width // (3 * heads)}")
    out: Tensor = _LanesAttention.apply(qkv, bias, heads)
    return out


def _check_qkv(qkv: Tensor, heads: int, bias: Tensor | None) -> tuple[int, int, int]:
    if qkv.dim() != 3 or heads < 1 or qkv.shape[-1] % (3 * heads) != 0:
        raise ValueError(f"qkv must be [S, L, 3 * heads * D] with {heads} heads; got {tuple(qkv.shape)}")
    s, length, width = qkv.shape
    if bias is not None and (bias.dim() != 2 or bias.shape[1] != width or bias.shape[0] == 0
                             or s % bias.shape[0] != 0):
        raise ValueError(f"bias must be [G, {width}] with G dividing the {s} sequences; got {tuple(bias.shape)}")
    return s, length, width


@cache
def lanes_unavailable() -> str | None:
    """Why the lanes kernel cannot run here (None when it can)."""
    if os.environ.get(ENV_SWITCH, "").lower() == "sdpa":
        return f"{ENV_SWITCH}=sdpa"
    return cpu_library.unavailable(SOURCE)


@cache
def _library() -> ctypes.CDLL:
    lib = cpu_library.load(SOURCE)
    ptr, i64, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
    forward: list[Any] = [ptr, i64, i64, ptr, i64, ptr, ptr] + [i64] * 5 + [f32]
    backward: list[Any] = [ptr, i64, i64, ptr, i64, ptr, ptr, i64, i64, i64, ptr, ptr] + [i64] * 5 + [f32]
    lib.fedbrb_attention_forward.argtypes, lib.fedbrb_attention_backward.argtypes = forward, backward
    lib.fedbrb_attention_forward.restype = lib.fedbrb_attention_backward.restype = ctypes.c_int
    lib.fedbrb_attention_lanes.argtypes, lib.fedbrb_attention_lanes.restype = [], ctypes.c_int
    return lib


def _check(code: int) -> None:
    if code != 0:
        raise RuntimeError("the lanes attention kernel has no variant for this head dimension")


def _unit_last(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


class _LanesAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, qkv: Tensor, bias: Tensor | None, heads: int) -> Tensor:
        lib = _library()
        qkv = _unit_last(qkv.detach())
        bias = None if bias is None else bias.detach().contiguous()
        s, length, width = qkv.shape
        dim = width // (3 * heads)
        lanes = int(lib.fedbrb_attention_lanes())
        out = torch.empty(s, length, heads, dim)
        lse = torch.empty(-(-s * heads // lanes), length, lanes)
        _check(lib.fedbrb_attention_forward(qkv.data_ptr(), *qkv.stride()[:2], _address(bias), _seqs_per_bias(s, bias),
                                            out.data_ptr(), lse.data_ptr(), s, length, heads, dim,
                                            torch.get_num_threads(), 1.0 / math.sqrt(dim)))
        ctx.save_for_backward(qkv, out, lse, *(() if bias is None else (bias,)))
        return out.view(s, length, heads * dim)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor | None, None]:
        qkv, out, lse, *rest = ctx.saved_tensors
        bias = rest[0] if rest else None
        s, length, heads, dim = out.shape
        grad = _unit_last(grad)
        dqkv = torch.empty(s, length, 3 * heads * dim)
        _check(_library().fedbrb_attention_backward(
            qkv.data_ptr(), *qkv.stride()[:2], _address(bias), _seqs_per_bias(s, bias), out.data_ptr(),
            grad.data_ptr(), *grad.stride()[:2], dim, lse.data_ptr(), dqkv.data_ptr(), s, length, heads, dim,
            torch.get_num_threads(), 1.0 / math.sqrt(dim)))
        dbias = None
        if bias is not None and ctx.needs_input_grad[1]:
            dbias = dqkv.view(bias.shape[0], -1, dqkv.shape[-1]).sum(1)
        return dqkv, dbias, None


def _address(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _seqs_per_bias(s: int, bias: Tensor | None) -> int:
    return 1 if bias is None else s // bias.shape[0]
