"""Plain-torch references of the aggregation kernels; `aggregation_triton.py` (Triton) and
`csrc/aggregation_kernels.cu` (CUDA C++) implement the same functions with the same signatures.

A parameter tensor is seen as a 2-d array [rows, width] with width = cols * inner (axes 0 and 1
may be sliced; `inner` is the product of the whole trailing axes). Per tensor:

- `a` [rows, width]: the weighted sums A (accumulation dtype, float32 or float64).
- `c` [1 or rows, 1 or cols or width]: the weight sums C, reduced along axes where every client's
  weight is constant (a reduced axis holds one value, counted once per client: at global row 0,
  or at the first element of each C column). A mask makes C per element.
- `data` [n, k_rows, k_cols * inner]: n clients' slices; `rows` [n, k_rows] / `cols` [n, k_cols]
  int64: the global row / column of each local one; `mask` (optional) data-shaped weights.

scatter_add adds w_i * x to A and w_i to C, both times the mask; clients of weight 0 are skipped
(so their values, finite or not, never land), other non-finite values do land in A, where the
caller looks for them. apply_* finalize the rule from A (sums of w * delta for the broadcast
rule, of w * theta for overlap averaging), C and the pooled S, W.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..aggregation.sums import expand_reduced


def scatter_add_reference(a: Tensor, c: Tensor, data: Tensor, weights: Tensor, rows: Tensor, cols: Tensor,
                          inner: int, mask: Tensor | None = None) -> None:
    live = weights != 0  # clients of weight 0 are skipped, even where their values are not finite
    x, w, rows, cols = data[live].to(a.dtype), weights[live].to(a.dtype), rows[live], cols[live]
    m, k_rows, k_width = x.shape
    r = rows.reshape(m, k_rows, 1).expand(m, k_rows, k_width)
    j = (cols.unsqueeze(2) * inner + torch.arange(inner, device=a.device)).reshape(m, 1, k_width)
    j = j.expand(m, k_rows, k_width)
    wm = w.view(m, 1, 1) * (mask[live].to(a.dtype) if mask is not None else 1)
    wm = wm.expand(m, k_rows, k_width)
    a.index_put_((r, j), wm * x, accumulate=True)
    c_rows, c_width = c.shape
    per_c_col = a.shape[1] // c_width
    counted = (j % per_c_col == 0) & ((r == 0) | (c_rows > 1))
    c_r = r[counted] if c_rows > 1 else torch.zeros_like(r[counted])
    c.index_put_((c_r, (j // per_c_col)[counted]), wm[counted], accumulate=True)


def apply_overlap_reference(p: Tensor, a: Tensor, c: Tensor) -> Tensor:
    """A / C where C > 0, else p (in p's dtype)."""
    den = expand_reduced(c, a.shape)
    out = torch.where(den > 0, a / den.clamp_min(torch.finfo(a.dtype).tiny), p.to(a.dtype))
    return out.to(p.dtype)


def apply_broadcast_reference(p: Tensor, a: Tensor, c: Tensor, s: Tensor, w: Tensor, lam: float) -> Tensor:
    """p + ((1-lam) A + lam S[o]) / ((1-lam) C + lam W[o]) where the denominator is > 0, else p.
    s [tile_rows, tile_width] tiles A's shape; w is C pooled the same way, in C's reduced shape."""
    rows, width = a.shape
    tiles = (rows // s.shape[0], width // s.shape[1])
    num = (1 - lam) * a + lam * s.repeat(tiles)
    den = (1 - lam) * expand_reduced(c, a.shape) + lam * expand_reduced(w, s.shape).repeat(tiles)
    base = p.to(a.dtype)
    out = torch.where(den > 0, base + num / den.clamp_min(torch.finfo(a.dtype).tiny), base)
    return out.to(p.dtype)
