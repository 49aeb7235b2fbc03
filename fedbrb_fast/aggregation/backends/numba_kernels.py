"""numba CPU kernels: fused scatter-add of client slices into A and C, and the finalize pass.

Parallel layout (race-free, deterministic): each parallel chunk owns a band of global rows and walks
every client in order, adding the parts of the client's rows that fall into its band. Clients are
thus summed serially per element (the same order as a serial loop), and there is one parallel
region per tensor instead of one per client and tensor, whose start-up cost (~2 us) would exceed
the work of a small tensor. Within a row, each (row run, column run) pair is a contiguous slice on
both sides, added by a vectorizable loop.

Clients of weight 0 are skipped. Non-finite values are not tested here (a per-element test halves
the loop's speed): they propagate into A, where the caller looks for them once per tensor.
"""

from __future__ import annotations

import numpy as np

from ...optional import require

require("numba", "the numba aggregation backend")
from numba import njit, prange  # noqa: E402


@njit(inline="always", boundscheck=False)
def _add(dst, src, w):
    for j in range(src.size):
        dst[j] += w * src[j]


@njit(inline="always", boundscheck=False)
def _add_masked(dst, c_dst, src, mask, w):
    for j in range(src.size):
        wm = w * mask[j]
        dst[j] += wm * src[j]
        c_dst[j] += wm


@njit(inline="always", boundscheck=False)
def _add_constant(dst, w):
    for j in range(dst.size):
        dst[j] += w


@njit(parallel=True, cache=True, boundscheck=False)
def scatter_add(a, c, data, mask, has_mask, weights, row_ptr, row_start, row_local, row_length,
                col_ptr, col_start, col_local, col_length, inner, num_bands):
    """a[rows, width] += w_i * data_i over client i's slices; C likewise with w_i (x mask).

    data [n, k_rows, k_cols * inner]; rows/cols as runs (index_runs.Runs); c is [1 or rows,
    1 or cols or width]: a reduced axis is counted once, at global row 0 / the first element of
    each C column. mask (when has_mask) is data-shaped and c then per element. Clients of weight
    0 are skipped, so their values, finite or not, never reach the sums."""
    rows = a.shape[0]
    c_rows, c_width = c.shape
    per_c_col = a.shape[1] // c_width
    band_rows = (rows + num_bands - 1) // num_bands
    for band in prange(num_bands):
        q = np.int64(band)  # prange indices may be unsigned; int64 keeps index arithmetic integral
        lo, hi = q * band_rows, min(rows, (q + 1) * band_rows)
        for i in range(data.shape[0]):
            w = weights[i]
            if w == 0:
                continue
            for rr in range(row_ptr[i], row_ptr[i + 1]):
                g = row_start[rr]
                for r in range(max(g, lo), min(g + row_length[rr], hi)):
                    local_r = row_local[rr] + r - g
                    c_row = r if c_rows > 1 else 0
                    counts_c = c_rows > 1 or r == 0
                    for cr in range(col_ptr[i], col_ptr[i + 1]):
                        j0, l0, m = col_start[cr] * inner, col_local[cr] * inner, col_length[cr] * inner
                        src, dst = data[i, local_r, l0:l0 + m], a[r, j0:j0 + m]
                        if has_mask:
                            _add_masked(dst, c[c_row, j0:j0 + m], src, mask[i, local_r, l0:l0 + m], w)
                            continue
                        _add(dst, src, w)
                        if counts_c and c_width > 1:
                            _add_constant(c[c_row, j0 // per_c_col:(j0 + m) // per_c_col], w)
                    if counts_c and c_width == 1 and not has_mask:
                        c[c_row, 0] += w


@njit(inline="always", boundscheck=False)
def _overlap_segment(out, p, a, c, tiny):
    for j in range(a.size):
        den = c[j]
        out[j] = a[j] / max(den, tiny) if den > 0 else p[j]


@njit(inline="always", boundscheck=False)
def _overlap_segment_scalar(out, p, a, den, tiny):
    for j in range(a.size):
        out[j] = a[j] / max(den, tiny) if den > 0 else p[j]


@njit(parallel=True, cache=True, boundscheck=False)
def apply_overlap(out, p, a, c, tiny):
    """out = A / C where C > 0, else p (C reduced as in scatter_add)."""
    rows, width = a.shape
    c_rows, c_width = c.shape
    per_c_col = width // c_width
    for row in prange(rows):
        r = np.int64(row)  # prange indices may be unsigned; int64 keeps index arithmetic integral
        c_row = r if c_rows > 1 else 0
        if per_c_col == 1:
            _overlap_segment(out[r], p[r], a[r], c[c_row], tiny)
            continue
        for cj in range(c_width):
            j0 = cj * per_c_col
            _overlap_segment_scalar(out[r, j0:j0 + per_c_col], p[r, j0:j0 + per_c_col], a[r, j0:j0 + per_c_col],
                                    c[c_row, cj], tiny)


@njit(inline="always", boundscheck=False)
def _pool_deltas(s, a, c, p):
    for j in range(a.size):
        s[j] += a[j] - c[j] * p[j]


@njit(inline="always", boundscheck=False)
def _pool_deltas_scalar(s, a, c, p):
    for j in range(a.size):
        s[j] += a[j] - c * p[j]


@njit(inline="always", boundscheck=False)
def _broadcast_segment(out, p, a, c, s, w, keep, lam, tiny):
    for j in range(a.size):
        den = keep * c[j] + lam * w[j]
        out[j] = p[j] + (keep * (a[j] - c[j] * p[j]) + lam * s[j]) / max(den, tiny) if den > 0 else p[j]


@njit(inline="always", boundscheck=False)
def _broadcast_segment_scalar(out, p, a, c, s, w, keep, lam, tiny):
    den = keep * c + lam * w
    for j in range(a.size):
        out[j] = p[j] + (keep * (a[j] - c * p[j]) + lam * s[j]) / max(den, tiny) if den > 0 else p[j]


@njit(parallel=True, cache=True, boundscheck=False)
def finalize_broadcast(out, p, a, c, s, w, keep, lam, tiny):
    """The weighted broadcast from sums of w * theta: with A = a - c p (the sums of w * delta),
    s = A pooled over tile positions (computed here into s [tile_rows, tile_width]), and w = C
    pooled (in C's reduced shape), out = p + (keep A + lam s[o]) / (keep c + lam w[o]) where the
    denominator is > 0, else p (keep = 1 - lam). C is reduced as in scatter_add: C cells of
    `per_c_col` consecutive elements hold one value."""
    rows, width = a.shape
    c_rows, c_width = c.shape
    tile_rows, tile_width = s.shape
    w_rows, w_width = w.shape
    per_c_col = width // c_width
    for tile_row in prange(tile_rows):
        o = np.int64(tile_row)  # prange indices may be unsigned; int64 keeps index arithmetic integral
        s[o] = 0
        for src in range(o, rows, tile_rows):  # the rows at tile position o
            c_src = src if c_rows > 1 else 0
            for j0 in range(0, width, tile_width):
                j1 = j0 + tile_width
                if per_c_col == 1:
                    _pool_deltas(s[o], a[src, j0:j1], c[c_src, j0:j1], p[src, j0:j1])
                    continue
                for k0 in range(j0, j1, per_c_col):
                    k1 = k0 + per_c_col
                    _pool_deltas_scalar(s[o, k0 - j0:k1 - j0], a[src, k0:k1], c[c_src, k0 // per_c_col],
                                        p[src, k0:k1])
    for row in prange(rows):
        r = np.int64(row)
        c_row = r if c_rows > 1 else 0
        s_row, w_row = r % tile_rows, c_row % w_rows
        for j0 in range(0, width, tile_width):
            j1 = j0 + tile_width
            if per_c_col == 1:
                _broadcast_segment(out[r, j0:j1], p[r, j0:j1], a[r, j0:j1], c[c_row, j0:j1], s[s_row], w[w_row],
                                   keep, lam, tiny)
                continue
            for k0 in range(j0, j1, per_c_col):
                cj = k0 // per_c_col
                k1 = k0 + per_c_col
                _broadcast_segment_scalar(out[r, k0:k1], p[r, k0:k1], a[r, k0:k1], c[c_row, cj],
                                          s[s_row, k0 - j0:k1 - j0], w[w_row, cj % w_width], keep, lam, tiny)


@njit(inline="always", boundscheck=False)
def _accumulate(dst, src):
    for j in range(src.size):
        dst[j] += src[j]


@njit(parallel=True, cache=True, boundscheck=False)
def tile_sum(x, out):
    """out[o_r, o_c] = sum of x over the tiles of out's shape (the broadcast pool)."""
    rows, width = x.shape
    tile_rows, tile_width = out.shape
    for row in prange(tile_rows):
        o = np.int64(row)
        out[o] = 0
        for r in range(o, rows, tile_rows):
            for j0 in range(0, width, tile_width):
                _accumulate(out[o], x[r, j0:j0 + tile_width])


@njit(parallel=True, cache=True, boundscheck=False)
def count_non_finite(x):
    found = 0
    for row in prange(x.shape[0]):
        r = np.int64(row)
        for j in range(x.shape[1]):
            v = x[r, j]
            found += v - v != 0
    return found
