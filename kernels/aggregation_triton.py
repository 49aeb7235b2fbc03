"""Triton kernels of the aggregation backend `triton`: the same functions, with the same signatures,
as the plain-torch references in `aggregation.py` (see there for the array conventions).

scatter_add: one program per (client, block of local rows, block of local columns) gathers the
global row and column of each element from the index sets and adds w x into A with
atomics (clients overlap); C gets w at the one element that stands for each C cell. apply: one
elementwise pass that reads each tile offset's pooled S, W and writes the new parameters.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fedbrb_fast.optional import require

require("triton", "fedbrb_fast.kernels.aggregation_triton")
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

MAX_BLOCK_ROWS = 16
MAX_BLOCK_WIDTH = 256
APPLY_BLOCK = 1024


@triton.jit
def scatter_add_kernel(a_ptr, c_ptr, data_ptr, mask_ptr, weights_ptr, rows_ptr, cols_ptr,
                       k_rows, k_width, inner, width, rows_client_stride, cols_client_stride,
                       c_row_stride, c_per_col, c_rows_reduced,
                       HAS_MASK: tl.constexpr, BLOCK_ROWS: tl.constexpr,
                       BLOCK_WIDTH: tl.constexpr):
    client = tl.program_id(0)
    w = tl.load(weights_ptr + client)
    if w != 0:  # weight-0 clients are skipped
        local_r = tl.program_id(1) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        local_j = tl.program_id(2) * BLOCK_WIDTH + tl.arange(0, BLOCK_WIDTH)
        in_rows = local_r < k_rows
        in_width = local_j < k_width
        live = in_rows[:, None] & in_width[None, :]
        r = tl.load(rows_ptr + client * rows_client_stride + local_r, mask=in_rows, other=0)
        col = tl.load(cols_ptr + client * cols_client_stride + local_j // inner, mask=in_width, other=0)
        j = col * inner + local_j % inner
        src = client.to(tl.int64) * k_rows * k_width + local_r[:, None] * k_width + local_j[None, :]
        dst = r.to(tl.int64)[:, None] * width + j[None, :]
        x = tl.load(data_ptr + src, mask=live, other=0).to(a_ptr.dtype.element_ty)
        wm = tl.zeros((BLOCK_ROWS, BLOCK_WIDTH), dtype=a_ptr.dtype.element_ty) + w
        if HAS_MASK:
            wm = wm * tl.load(mask_ptr + src, mask=live, other=0).to(a_ptr.dtype.element_ty)
        tl.atomic_add(a_ptr + dst, wm * x, mask=live, sem="relaxed")
        counted = live & ((j % c_per_col) == 0)[None, :] & (r * c_rows_reduced == 0)[:, None]
        c_dst = r.to(tl.int64)[:, None] * c_row_stride + (j // c_per_col)[None, :]
        tl.atomic_add(c_ptr + c_dst, wm, mask=counted, sem="relaxed")


@triton.jit
def apply_kernel(out_ptr, p_ptr, a_ptr, c_ptr, s_ptr, w_ptr, numel, width, c_many_rows, c_width, c_per_col,
                 s_rows, s_width, w_rows, w_width, keep, lam, tiny, BROADCAST: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = offs < numel
    r = offs // width
    j = offs % width
    a = tl.load(a_ptr + offs, mask=live, other=0)
    p = tl.load(p_ptr + offs, mask=live, other=0).to(a.dtype)
    c_row = r * c_many_rows
    c_col = j // c_per_col
    c = tl.load(c_ptr + c_row * c_width + c_col, mask=live, other=0)
    if BROADCAST:
        s = tl.load(s_ptr + (r % s_rows) * s_width + j % s_width, mask=live, other=0)
        wp = tl.load(w_ptr + (c_row % w_rows) * w_width + c_col % w_width, mask=live, other=0)
        den = keep * c + lam * wp
        out = tl.where(den > 0, p + (keep * a + lam * s) / tl.maximum(den, tiny), p)
    else:
        out = tl.where(c > 0, a / tl.maximum(c, tiny), p)
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=live)


def scatter_add(a: Tensor, c: Tensor, data: Tensor, weights: Tensor, rows: Tensor, cols: Tensor, inner: int,
                mask: Tensor | None = None) -> None:
    n, k_rows, k_width = data.shape
    if n == 0:
        return
    data = data.contiguous()
    rows, cols = _unit_stride(rows), _unit_stride(cols)
    block_rows = min(MAX_BLOCK_ROWS, triton.next_power_of_2(k_rows))
    block_width = min(MAX_BLOCK_WIDTH, triton.next_power_of_2(k_width))
    grid = (n, triton.cdiv(k_rows, block_rows), triton.cdiv(k_width, block_width))
    scatter_add_kernel[grid](
        a, c, data, mask.contiguous() if mask is not None else data,
        weights.to(a.dtype), rows, cols, k_rows, k_width, inner, a.shape[1], rows.stride(0), cols.stride(0),
        c.shape[1] if c.shape[0] > 1 else 0, a.shape[1] // c.shape[1], int(c.shape[0] == 1),
        HAS_MASK=mask is not None, BLOCK_ROWS=block_rows, BLOCK_WIDTH=block_width)


def apply_overlap(p: Tensor, a: Tensor, c: Tensor) -> Tensor:
    return _apply(p, a, c, a, c, 0.0, broadcast=False)


def apply_broadcast(p: Tensor, a: Tensor, c: Tensor, s: Tensor, w: Tensor, lam: float) -> Tensor:
    return _apply(p, a, c, s.contiguous(), w.contiguous(), lam, broadcast=True)


def _apply(p: Tensor, a: Tensor, c: Tensor, s: Tensor, w: Tensor, lam: float, broadcast: bool) -> Tensor:
    out = p.new_empty(a.shape)
    numel = a.numel()
    if numel == 0:
        return out
    c = c.contiguous()
    apply_kernel[(triton.cdiv(numel, APPLY_BLOCK),)](
        out, p.contiguous(), a, c, s, w, numel, a.shape[1], int(c.shape[0] > 1), c.shape[1], a.shape[1] // c.shape[1],
        s.shape[0], s.shape[1], w.shape[0], w.shape[1], 1.0 - lam, lam,
        torch.finfo(a.dtype).tiny, BROADCAST=broadcast, BLOCK=APPLY_BLOCK)
    return out


def _unit_stride(index: Tensor) -> Tensor:
    """Index sets with unit stride along positions; a stride-0 client axis (a whole axis) is kept."""
    return index if index.stride(1) == 1 else index.contiguous()
