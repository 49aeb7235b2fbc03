"""Triton kernels of the grouped block-sliced GEMM (layout in grouped_gemm_problems.py).

Every kernel runs one program per output tile over a flat grid: the tile map gives each program
its problem and tile position, the problem table its rows, sizes and weight window. Weight rows
and columns are wrap-around windows of a source matrix, indexed in place (no gathered copy).

Dtypes: fp32 (dot precision chosen by the caller), fp16 (fp16 dot, fp32 accumulate), bf16 (loaded
as bf16 and upcast to fp32 before the dot: the interpreter cannot multiply bf16, and upcast bf16
is exact in tf32, so the GPU still runs it on tensor cores).
"""

from __future__ import annotations

from fedbrb_fast.optional import require

from . import grouped_gemm_problems as table

require("triton", "the Triton grouped GEMM")
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

FIELDS: tl.constexpr = tl.constexpr(table.FIELDS)


@triton.jit
def _load_problem(problems_ptr, tile_map_ptr, tile):
    # Tile map rows are (problem, tile_a, tile_b); table columns ROW, M, N, K, SOURCE, ROW_START, COL_START.
    g = tl.load(tile_map_ptr + tile * 3)
    tile_a = tl.load(tile_map_ptr + tile * 3 + 1)
    tile_b = tl.load(tile_map_ptr + tile * 3 + 2)
    entry = problems_ptr + g * FIELDS
    row = tl.load(entry)
    m = tl.load(entry + 1)
    n = tl.load(entry + 2)
    k = tl.load(entry + 3)
    source = tl.load(entry + 4)
    row_start = tl.load(entry + 5)
    col_start = tl.load(entry + 6)
    return tile_a, tile_b, row, m, n, k, source, row_start, col_start


@triton.jit
def _wrap(start, offsets, size):
    # start < size and valid offsets < size, so one conditional subtraction is the modulo.
    index = start + offsets
    return tl.where(index >= size, index - size, index)


@triton.jit
def _mma(a, b, acc, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def grouped_linear_forward_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, problems_ptr, tile_map_ptr,
    stride_xm, stride_xk, stride_ws, stride_wr, stride_wc, stride_bs, stride_br, stride_ym, stride_yn,
    R, C,
    HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Y[rows, n] = sum_k X[rows, k] W[n, k] + b[n] for one (BLOCK_M, BLOCK_N) tile."""
    tile_m, tile_n, row, m, n, k, source, row_start, col_start = _load_problem(
        problems_ptr, tile_map_ptr, tl.program_id(0))
    offs_m = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < m
    mask_n = offs_n < n
    x_rows = x_ptr + (row + offs_m).to(tl.int64)[:, None] * stride_xm
    w_source_rows = _wrap(row_start, offs_n, R)
    w_rows = w_ptr + source.to(tl.int64) * stride_ws + w_source_rows.to(tl.int64)[None, :] * stride_wr

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, k, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < k
        x = tl.load(x_rows + offs_k[None, :] * stride_xk, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        w_t = tl.load(w_rows + _wrap(col_start, offs_k, C)[:, None] * stride_wc,
                      mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc = _mma(x, w_t, acc, UPCAST, PRECISION)
    if HAS_BIAS:
        bias = tl.load(b_ptr + source.to(tl.int64) * stride_bs + w_source_rows * stride_br, mask=mask_n, other=0.0)
        acc += bias.to(tl.float32)[None, :]
    y = y_ptr + (row + offs_m).to(tl.int64)[:, None] * stride_ym + offs_n[None, :] * stride_yn
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def grouped_linear_grad_input_kernel(
    dy_ptr, w_ptr, dx_ptr, problems_ptr, tile_map_ptr,
    stride_dym, stride_dyn, stride_ws, stride_wr, stride_wc, stride_dxm, stride_dxk,
    R, C,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dX[rows, k] = sum_n dY[rows, n] W[n, k] for one (BLOCK_M, BLOCK_K) tile."""
    tile_m, tile_k, row, m, n, k, source, row_start, col_start = _load_problem(
        problems_ptr, tile_map_ptr, tl.program_id(0))
    offs_m = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tile_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_m = offs_m < m
    mask_k = offs_k < k
    dy_rows = dy_ptr + (row + offs_m).to(tl.int64)[:, None] * stride_dym
    w_cols = w_ptr + source.to(tl.int64) * stride_ws + _wrap(col_start, offs_k, C)[None, :] * stride_wc

    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    for n0 in range(0, n, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < n
        dy = tl.load(dy_rows + offs_n[None, :] * stride_dyn, mask=mask_m[:, None] & mask_n[None, :], other=0.0)
        w = tl.load(w_cols + _wrap(row_start, offs_n, R).to(tl.int64)[:, None] * stride_wr,
                    mask=mask_n[:, None] & mask_k[None, :], other=0.0)
        acc = _mma(dy, w, acc, UPCAST, PRECISION)
    dx = dx_ptr + (row + offs_m).to(tl.int64)[:, None] * stride_dxm + offs_k[None, :] * stride_dxk
    tl.store(dx, acc.to(dx_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_k[None, :])


@triton.jit
def grouped_linear_grad_weight_kernel(
    dy_ptr, x_ptr, dw_ptr, db_ptr, problems_ptr, tile_map_ptr,
    stride_dym, stride_dyn, stride_xm, stride_xk, stride_dws, stride_dwr, stride_dwc, stride_dbs, stride_dbr,
    R, C,
    HAS_BIAS: tl.constexpr, ATOMIC: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dW[n, k] = sum_rows dY[rows, n] X[rows, k] for one (BLOCK_N, BLOCK_K) tile, written at the
    window's wrapped positions of the fp32 gradient buffers; the tiles with tile_k = 0 also
    write db[n] = sum_rows dY[rows, n]. ATOMIC when problems share a source matrix."""
    tile_n, tile_k, row, m, n, k, source, row_start, col_start = _load_problem(
        problems_ptr, tile_map_ptr, tl.program_id(0))
    offs_n = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tile_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_n = offs_n < n
    mask_k = offs_k < k

    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    bias_acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for m0 in range(0, m, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        rows = (row + offs_m).to(tl.int64)
        mask_m = offs_m < m
        dy_t = tl.load(dy_ptr + rows[None, :] * stride_dym + offs_n[:, None] * stride_dyn,
                       mask=mask_n[:, None] & mask_m[None, :], other=0.0)
        x = tl.load(x_ptr + rows[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        acc = _mma(dy_t, x, acc, UPCAST, PRECISION)
        if HAS_BIAS:
            bias_acc += tl.sum(dy_t.to(tl.float32), axis=1)

    w_source_rows = _wrap(row_start, offs_n, R)
    dw = (dw_ptr + source.to(tl.int64) * stride_dws + w_source_rows.to(tl.int64)[:, None] * stride_dwr
          + _wrap(col_start, offs_k, C)[None, :] * stride_dwc)
    mask_w = mask_n[:, None] & mask_k[None, :]
    if ATOMIC:
        tl.atomic_add(dw, acc, mask=mask_w)
    else:
        tl.store(dw, acc, mask=mask_w)
    if HAS_BIAS:
        if tile_k == 0:
            db = db_ptr + source.to(tl.int64) * stride_dbs + w_source_rows * stride_dbr
            if ATOMIC:
                tl.atomic_add(db, bias_acc, mask=mask_n)
            else:
                tl.store(db, bias_acc, mask=mask_n)


# Decided when the decorators ran: under TRITON_INTERPRET=1 the kernels run on CPU tensors.
INTERPRETED = not isinstance(grouped_linear_forward_kernel, triton.runtime.JITFunction)
