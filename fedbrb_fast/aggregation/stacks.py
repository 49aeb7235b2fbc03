"""Client updates as per-tensor stacks: what the backends accumulate from.

A `ClientBatch` is already stacked, so its stack is a set of views (no copies); a single
`ClientUpdate` becomes a stack of one. Index sets are shared by every tensor sliced by the same
channel group, so their runs are computed once per group.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from ..models.factored import FactoredStack
from .geometry import TensorGeometry
from .index_runs import AxisIndex, sliced_axis, whole_axis
from .updates import ClientBatch, ClientUpdate


@dataclass(frozen=True)
class SliceStack:
    """One tensor's slices from n clients, flattened like `TensorGeometry.flat`."""

    data: Tensor  # [n, k_rows, k_cols * inner]
    rows: AxisIndex  # global row of each local row
    cols: AxisIndex  # global column (of `cols`) of each local column
    mask: Tensor | None  # elementwise weights, materialized to data's shape, or None


@dataclass(frozen=True)
class FactoredSlice:
    """One tensor's slices from n clients as factors (2-d tensors, no mask): summed per run of
    clients sharing a slice, then added like one client per run."""

    factors: FactoredStack
    rows: AxisIndex
    cols: AxisIndex

    @property
    def nbytes(self) -> int:
        f = self.factors
        return sum(t.numel() * t.element_size() for t in (f.base, f.left, f.right))

    def reduced(self, weights: Tensor) -> tuple[SliceStack, Tensor]:
        """(one SliceStack row per run: the run's weighted mean tensor, the runs' weights)."""
        starts, run_weights, sums = self.factors.run_sums(weights)
        w = run_weights.to(sums.dtype).view(-1, 1, 1)
        mean = torch.where(w > 0, sums / torch.where(w > 0, w, 1), 0)
        pick = torch.tensor(starts, dtype=torch.int64, device=self.rows.index.device)
        return (SliceStack(mean, AxisIndex(self.rows.index[pick], self.rows.whole),
                           AxisIndex(self.cols.index[pick], self.cols.whole), None), run_weights)


@dataclass(frozen=True)
class ClientStack:
    clients: tuple[int, ...]
    weights: Tensor  # [n] float64
    # in the order of the clients' params (the order non-finite tensors are reported in)
    slices: dict[str, SliceStack | FactoredSlice]

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes if isinstance(s, FactoredSlice) else s.data.numel() * s.data.element_size()
                   for s in self.slices.values())


def stack_of(item: ClientUpdate | ClientBatch, geometry: Mapping[str, TensorGeometry]) -> ClientStack:
    if isinstance(item, ClientBatch):
        clients, weights = tuple(item.clients), item.weights.detach().to(torch.float64).cpu()
        indices, params, masks = item.indices, item.params, item.masks
    else:
        clients, weights = (item.client,), torch.tensor([float(item.weight)], dtype=torch.float64)
        indices = tuple(ix.unsqueeze(0) for ix in item.indices)
        params = {name: t.unsqueeze(0) for name, t in item.params.items()}
        masks = {name: m.unsqueeze(0) for name, m in item.masks.items()}
    n = len(clients)
    device = next(iter(params.values())).device
    axes = [sliced_axis(ix.to(device)) for ix in indices]
    slices: dict[str, SliceStack | FactoredSlice] = {}
    for name, stacked in params.items():
        geo = geometry[name]
        rows = axes[geo.row_group] if geo.row_group is not None else whole_axis(n, geo.rows, stacked.device)
        cols = axes[geo.col_group] if geo.col_group is not None else whole_axis(n, geo.cols, stacked.device)
        if isinstance(stacked, FactoredStack):
            if name in masks or len(geo.shape) != 2:
                raise ValueError(f"{name}: factored client tensors must be 2-d and unmasked")
            slices[name] = FactoredSlice(stacked, rows, cols)
            continue
        data = geo.flat_stack(stacked.detach())
        mask = masks.get(name)
        if mask is not None:
            sub = stacked.shape[1:]
            mask = mask.reshape(n, *[1] * (len(sub) - mask.dim() + 1), *mask.shape[1:]).expand(n, *sub)
            mask = geo.flat_stack(mask).contiguous()
        slices[name] = SliceStack(data, rows, cols, mask)
    return ClientStack(clients, weights, slices)


def non_finite_clients(data: Tensor) -> Tensor:
    """bool [n] (CPU): which of the stacked clients hold a NaN/Inf. A float64 sum of float32 values
    cannot overflow, so a finite sum clears a client in one reduction; only clients whose sum is
    not finite are scanned element by element."""
    sums = data.flatten(1).sum(1, dtype=torch.float64)
    bad = ~torch.isfinite(sums)
    for i in bad.nonzero().flatten().tolist():
        bad[i] = not bool(torch.isfinite(data[i]).all())
    return bad.cpu()
