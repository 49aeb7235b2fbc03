"""Plain-torch reference of the grouped block-sliced GEMM: a loop of matmuls over the problems,
each gathering its wrap-around weight window with index_select. Autograd through it defines the
gradients the Triton kernels must reproduce."""

from __future__ import annotations

import torch
from torch import Tensor

from .grouped_gemm_problems import GroupedProblems


def as_stacked_sources(w_src: Tensor, b_src: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Views of a single global tensor ([R, C] weight, [R] bias) as a stack of one source."""
    if w_src.dim() == 2:
        return w_src.unsqueeze(0), None if b_src is None else b_src.unsqueeze(0)
    return w_src, b_src


def wrapped_window(start: int, size: int, total: int, device: torch.device) -> Tensor:
    """Source indices of a window of `size` consecutive positions from `start`, modulo `total`."""
    return (torch.arange(size, device=device) + start) % total


def grouped_linear_reference(x: Tensor, w_src: Tensor, b_src: Tensor | None, problems: GroupedProblems) -> Tensor:
    """Y [x rows, max N_g]: rows of problem g hold X_g W_gᵀ + b_g in columns :N_g; every other
    entry is zero. `w_src` is [S, R, C] (or one [R, C] global tensor), `b_src` [S, R] ([R]) or None."""
    weights, biases = as_stacked_sources(w_src, b_src)
    problems.check(x, weights.shape, None if biases is None else biases.shape)
    _, r, c = weights.shape
    y = x.new_zeros(x.shape[0], problems.max_out_features)
    for row, m, n, k, source, row_start, col_start in problems.table.tolist():
        if m == 0 or n == 0:
            continue
        rows = wrapped_window(row_start, n, r, x.device)
        weight = weights[source].index_select(0, rows).index_select(1, wrapped_window(col_start, k, c, x.device))
        out = x[row:row + m, :k] @ weight.T
        if biases is not None:
            out = out + biases[source].index_select(0, rows)
        y[row:row + m, :n] = out
    return y
