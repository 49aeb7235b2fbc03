"""The aggregation rules of docs/algorithm.md#aggregation in plain torch: the reference every fast
backend matches. Clarity over speed: one fancy-indexed accumulation per client and tensor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from ..models.layout import ModelLayout, ParamSpec, gather_tensor
from .errors import AggregationOverflow
from .rule import AggregationResult, AggregationRule
from .updates import ClientBatch, ClientUpdate, as_updates
from .validation import non_finite_tensors, validate_updates


def aggregate_reference(global_params: Mapping[str, Tensor], layout: ModelLayout,
                        updates: Sequence[ClientUpdate | ClientBatch], rule: AggregationRule) -> AggregationResult:
    """Validate everything first, drop non-finite updates, then apply the rule."""
    updates = as_updates(updates)
    validate_updates(global_params, layout, updates)
    rule.check_groups(layout.group_sizes, layout.group_segments)
    excluded = {}
    for u in updates:
        bad = non_finite_tensors(u)
        if bad:
            excluded[u.client] = f"non-finite values in {', '.join(bad)}"
    kept = [u for u in updates if u.client not in excluded]
    new = {}
    for spec in layout.params:
        p = global_params[spec.name]
        if rule.kind == "overlap":
            new[spec.name] = _overlap(p, spec, kept)
        else:
            new[spec.name] = _broadcast(p, spec, kept, rule.lam, _tile_positions(spec, layout, rule.num_blocks))
    overflowed = [n for n, t in new.items() if not torch.isfinite(t).all() and torch.isfinite(global_params[n]).all()]
    if overflowed:
        raise AggregationOverflow(overflowed)
    return AggregationResult(params=new, included=[u.client for u in kept], excluded=excluded)


def _positions(spec: ParamSpec, indices: Sequence[Tensor]) -> list[Tensor]:
    """Global index along every axis of the client tensor (whole axes: arange)."""
    return [indices[g] if g is not None else torch.arange(n) for n, g in zip(spec.shape, spec.axis_groups, strict=True)]


def _mesh(axes: list[Tensor]) -> tuple[Tensor, ...]:
    return torch.meshgrid(*axes, indexing="ij")


def _elementwise_weight(u: ClientUpdate, name: str, like: Tensor) -> Tensor:
    w = torch.full_like(like, float(u.weight))
    mask = u.masks.get(name)
    return w * mask.to(like.dtype) if mask is not None else w


def _overlap(p: Tensor, spec: ParamSpec, updates: Sequence[ClientUpdate]) -> Tensor:
    """sum_i w_i theta_i[e] / sum_i w_i over the clients covering e; uncovered e keep their value."""
    num, den = torch.zeros_like(p), torch.zeros_like(p)
    for u in updates:
        theta = u.params[spec.name].to(p.dtype)
        w = _elementwise_weight(u, spec.name, theta)
        mesh = _mesh(_positions(spec, u.indices))
        num.index_put_(mesh, w * theta, accumulate=True)
        den.index_put_(mesh, w, accumulate=True)
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(p.dtype).tiny), p)


def _tile_positions(spec: ParamSpec, layout: ModelLayout, num_blocks: int) -> tuple[int, ...]:
    """Tile positions along every axis of a tensor: K on a sliced axis, R_g * K (segment, block) on
    an axis of a group of R_g segments (docs/algorithm.md#segments), 1 on a whole axis."""
    return tuple(num_blocks * layout.segments(g) if g is not None else 1 for g in spec.axis_groups)


def _broadcast(p: Tensor, spec: ParamSpec, updates: Sequence[ClientUpdate], lam: float,
               positions: Sequence[int]) -> Tensor:
    """Weighted broadcast. `positions[a]`: the tile positions along axis a (K on a sliced axis, R*K
    on one of a group of R segments, 1 on a whole axis), so tiles have B_a = n_a / positions[a]
    channels. Global element e sits at tile position (e_a // B_a per sliced axis a) and in-tile
    offset (e_a % B_a); A, C accumulate per element, S, W per in-tile offset over all clients, and
    P[e] += ((1-lam) A[e] + lam S[off(e)]) / ((1-lam) C[e] + lam W[off(e)])."""
    tile_shape = tuple(n // t for n, t in zip(spec.shape, positions, strict=True))
    a_sum, c_sum = torch.zeros_like(p), torch.zeros_like(p)
    s_sum = torch.zeros(tile_shape, dtype=p.dtype)
    w_sum = torch.zeros(tile_shape, dtype=p.dtype)
    for u in updates:
        theta = u.params[spec.name].to(p.dtype)
        delta = theta - gather_tensor(p, spec, u.indices)
        w = _elementwise_weight(u, spec.name, theta)
        pos = _positions(spec, u.indices)
        a_sum.index_put_(_mesh(pos), w * delta, accumulate=True)
        c_sum.index_put_(_mesh(pos), w, accumulate=True)
        offsets = _mesh([ix % tile_shape[a] for a, ix in enumerate(pos)])
        s_sum.index_put_(offsets, w * delta, accumulate=True)
        w_sum.index_put_(offsets, w, accumulate=True)
    num = (1 - lam) * a_sum + lam * s_sum.repeat(list(positions))
    den = (1 - lam) * c_sum + lam * w_sum.repeat(list(positions))
    return torch.where(den > 0, p + num / den.clamp_min(torch.finfo(p.dtype).tiny), p)
