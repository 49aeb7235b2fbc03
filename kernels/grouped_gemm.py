"""Grouped block-sliced linear layer: every client's linear layer of a round in one kernel launch
per pass, weights read in place as wrap-around windows of a source tensor.

    problems = GroupedProblems.build(rows, out_features, in_features, source=..., row_start=..., col_start=...)
    y = grouped_linear(x, w_src, b_src, problems)              # triton on CUDA, reference on CPU
    y = grouped_linear_triton(x, w_src, b_src, problems)       # always the kernels (CPU: interpreter)
    y = grouped_linear_reference(x, w_src, b_src, problems)    # loop of torch matmuls

`x` [rows, K_max] packs the problems' rows (table layout in grouped_gemm_problems.py); `w_src` is
[S, R, C] (stacked client weights) or [R, C] (the global tensor); `b_src` [S, R] / [R] or None.
The result is [rows, max N_g], zero outside the problems' rows and columns. Gradients flow to x,
w_src and b_src (shaped like them, zero where no window reads).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from .grouped_gemm_kernels import INTERPRETED
from .grouped_gemm_launch import (
    SUPPORTED_DTYPES,
    TileConfig,
    default_tiles,
    forward_launch,
    grad_input_launch,
    grad_weight_launch,
)
from .grouped_gemm_problems import GroupedProblems
from .grouped_gemm_reference import as_stacked_sources, grouped_linear_reference

__all__ = ["GroupedProblems", "TileConfig", "grouped_linear", "grouped_linear_reference", "grouped_linear_triton"]

BACKENDS = ("auto", "triton", "reference")


class _GroupedLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, w_src: Tensor, b_src: Tensor | None, problems: GroupedProblems, tiles: TileConfig,
                allow_tf32: bool) -> Tensor:
        y = x.new_zeros(x.shape[0], problems.max_out_features)
        forward_launch(x, w_src, b_src, y, problems, tiles, allow_tf32).run()
        ctx.save_for_backward(x, w_src, b_src)
        ctx.problems, ctx.tiles, ctx.allow_tf32 = problems, tiles, allow_tf32
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, w_src, b_src = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        dx = dw = db = None
        if need_x:
            dx = torch.zeros(x.shape, dtype=x.dtype, device=x.device)
            grad_input_launch(dy, w_src, dx, ctx.problems, ctx.tiles, ctx.allow_tf32).run()
        if need_w or need_b:
            # fp32 buffers: overlapping windows accumulate atomically, and half types lose no bits.
            dw32 = torch.zeros(w_src.shape, dtype=torch.float32, device=x.device)
            db32 = torch.zeros(b_src.shape, dtype=torch.float32, device=x.device) if need_b else None
            grad_weight_launch(dy, x, dw32, db32, ctx.problems, ctx.tiles, ctx.allow_tf32).run()
            dw = dw32.to(w_src.dtype) if need_w else None
            db = db32.to(b_src.dtype) if db32 is not None else None
        return dx, dw, db, None, None, None


def grouped_linear_triton(x: Tensor, w_src: Tensor, b_src: Tensor | None, problems: GroupedProblems, *,
                          tiles: TileConfig | None = None, allow_tf32: bool = False) -> Tensor:
    """The Triton kernels, whatever the device: CUDA tensors, or CPU tensors when the kernels run
    under TRITON_INTERPRET=1. fp32 dots are full precision unless `allow_tf32`."""
    weights, biases = as_stacked_sources(w_src, b_src)
    _check_triton_inputs(x, weights, biases)
    problems.check(x, weights.shape, None if biases is None else biases.shape)
    return _GroupedLinearFunction.apply(x, weights, biases, problems, tiles or default_tiles(problems), allow_tf32)


def grouped_linear(x: Tensor, w_src: Tensor, b_src: Tensor | None, problems: GroupedProblems, *,
                   backend: str = "auto", tiles: TileConfig | None = None, allow_tf32: bool = False) -> Tensor:
    """Dispatch: "auto" runs the kernels on CUDA tensors of a supported dtype and the reference
    otherwise; "triton" runs the kernels on CUDA tensors and warns when it falls back to the
    reference (CPU tensors); "reference" always runs the torch loop."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if backend != "reference" and x.is_cuda and (backend == "triton" or x.dtype in SUPPORTED_DTYPES):
        return grouped_linear_triton(x, w_src, b_src, problems, tiles=tiles, allow_tf32=allow_tf32)
    if backend == "triton":
        warnings.warn("grouped_linear: triton requested on CPU tensors, running the torch reference instead "
                      "(grouped_linear_triton forces the kernels, which need TRITON_INTERPRET=1 on CPU)",
                      RuntimeWarning, stacklevel=2)
    return grouped_linear_reference(x, w_src, b_src, problems)


def _check_triton_inputs(x: Tensor, weights: Tensor, biases: Tensor | None) -> None:
    tensors = [x, weights] + ([biases] if biases is not None else [])
    if any(t.dtype != x.dtype or t.device != x.device for t in tensors):
        raise ValueError("x, w_src and b_src must share one dtype and device")
    if x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"the kernels support {SUPPORTED_DTYPES}, got {x.dtype}")
    if not x.is_cuda and not INTERPRETED:
        raise RuntimeError("the Triton kernels need CUDA tensors; on CPU they run only when TRITON_INTERPRET=1 "
                           "was set before triton was imported")
