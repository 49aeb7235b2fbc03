"""Streaming aggregation: add clients in any grouping (bounded memory), read or merge the partial
sums A, C, S, W (docs/algorithm.md#aggregation), finalize the new global model.

Non-finite updates are excluded, and the sums end up exactly as if they had never been sent. The
first add into empty sums, or an add at least as large as the sums, runs optimistically: one pass,
then a look at A (a NaN/Inf anywhere in a client's values makes A non-finite where it lands); only
if A is not finite are the clients checked one by one, the sums cleared and the pass repeated with
the culprits weighted 0 (kernels skip clients of weight 0). A small add into non-empty sums checks
its clients first instead, cheap while its data is in cache. Weight-0 clients never reach A, so
they are always checked directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..models.layout import ModelLayout
from ..profiling import nvtx_range
from .array_types import array_type_of, as_tensor
from .backends import get_backend
from .errors import AggregationError, AggregationOverflow
from .geometry import TensorGeometry
from .portable import SlicedAxes, Update, client_update, tensor_layout
from .rule import AggregationResult, AggregationRule
from .stacks import ClientStack, FactoredSlice, non_finite_clients, stack_of
from .sums import PartialSums, TensorSums
from .updates import ClientBatch, ClientUpdate
from .validation import check_items, validate_updates

Item = ClientUpdate | ClientBatch | Update


class Accumulator:
    """`layout`: a ModelLayout, or the sliced axes per tensor name (`{"fc1.weight": [0], ...}`)
    for framework-agnostic `Update`s, with `{axis: R}` for an axis of R equal segments
    (`{"q.weight": {0: 4}}`: 4 heads; docs/aggregation.md). `dtype`: accumulation dtype, float32
    or float64 (default: the parameters' dtype, as the reference computes; float32 for half
    types). `backend`: "auto", "torch", "numba", "triton", "cuda", "cupy"; `.backend` names the one used."""

    def __init__(self, global_params: Mapping[str, Any], layout: ModelLayout | SlicedAxes,
                 rule: AggregationRule, *, backend: str = "auto", dtype: torch.dtype | None = None) -> None:
        self._array_type = array_type_of(global_params.values())
        params = {name: as_tensor(v) for name, v in global_params.items()}
        if dtype is None:
            dtype = torch.float64 if any(v.dtype == torch.float64 for v in params.values()) else torch.float32
        if dtype not in (torch.float32, torch.float64):
            raise AggregationError(f"accumulation dtype must be float32 or float64, got {dtype}")
        if not isinstance(layout, ModelLayout):
            layout = tensor_layout({k: tuple(v.shape) for k, v in params.items()}, layout)
        validate_updates(params, layout, [])  # the reference's checks of the global tensors
        rule.check_groups(layout.group_sizes, layout.group_segments)
        self._device = params[layout.names[0]].device if layout.names else torch.device("cpu")
        self._backend = get_backend(backend, self._device)
        self.backend: str = self._backend.name
        self.layout, self.rule, self.dtype = layout, rule, dtype
        self._params = params
        self._geometry = {spec.name: TensorGeometry.of(spec, layout) for spec in layout.params}
        self._sums = self._zero_sums(self._device)
        self.included: list[int] = []
        self.excluded: dict[int, str] = {}
        self._empty = True

    # -- adding clients ---------------------------------------------------------------------------
    def add(self, items: Item | Iterable[Item]) -> None:
        """Validate (AggregationError, nothing added) and accumulate; a client with NaN/Inf values
        is excluded and reported in `.excluded`."""
        given = [items] if isinstance(items, (ClientUpdate, ClientBatch, Update)) else list(items)
        updates = [self._client_update(u, pos) if isinstance(u, Update) else u for pos, u in enumerate(given)]
        with nvtx_range("aggregate.validate"):
            check_items(self._params, self.layout, updates, self._seen())
        self.add_validated(updates)

    def add_validated(self, items: Sequence[ClientUpdate | ClientBatch]) -> None:
        """`add` for items that already passed `check_items` against this accumulator's inputs."""
        with nvtx_range("aggregate.accumulate"):
            for item in items:
                self._add_stack(stack_of(item, self._geometry))

    def _add_stack(self, stack: ClientStack) -> None:
        weights = stack.weights.to(self.dtype).to(self._device)
        skipped = stack.weights == 0  # never reach the sums, so their values are checked here
        if self._empty or stack.nbytes >= self._nbytes():
            target = self._sums if self._empty else self._zero_sums(self._device)
            self._scatter(target, stack, weights)
            reached = not all(self._backend.all_finite(target[name].a) for name in stack.slices)
            flags = _non_finite(stack, torch.ones_like(skipped) if reached else skipped)
            bad = _any(flags, len(stack.clients))
            if reached:
                for sums in target.values():
                    sums.zero_()
                self._scatter(target, stack, weights.masked_fill(bad.to(weights.device), 0))
            if target is not self._sums:
                self._merge_sums(target)
        else:
            flags = _non_finite(stack, torch.ones_like(skipped))
            bad = _any(flags, len(stack.clients))
            self._scatter(self._sums, stack, weights.masked_fill(bad.to(weights.device), 0))
        self._empty = False
        for i, client in enumerate(stack.clients):
            if bad[i]:
                self.excluded[client] = f"non-finite values in {', '.join(n for n, f in flags.items() if f[i])}"
            else:
                self.included.append(client)

    def _scatter(self, target: dict[str, TensorSums], stack: ClientStack, weights: Tensor) -> None:
        for name, piece in stack.slices.items():
            sums = target[name]
            with nvtx_range(f"aggregate.{self.backend}.scatter_add:{name}"):
                if isinstance(piece, FactoredSlice):  # one weighted mean per run of clients sharing a slice
                    reduced, run_weights = piece.reduced(weights)
                    self._backend.scatter_add(sums, reduced, run_weights.to(weights.dtype))
                    continue
                if piece.mask is not None:
                    sums.weigh_elementwise()
                self._backend.scatter_add(sums, piece, weights)

    # -- partial sums -----------------------------------------------------------------------------
    def partial_sums(self) -> dict[str, PartialSums]:
        """A, C (global shape) and, under the broadcast rule, S, W (tile shape) per tensor: sums
        over this accumulator's clients; those of disjoint client sets add up (all-reduce them)."""
        if self.rule.kind == "overlap":
            return {name: sums.partial(None, None) for name, sums in self._sums.items()}
        return {name: sums.partial(self.rule.num_blocks, self._flat_params(name)) for name, sums in self._sums.items()}

    def add_partial_sums(self, partial: Mapping[str, PartialSums]) -> None:
        """Add sums from elsewhere (e.g. all-reduced from other workers; S, W follow from A, C).
        Their clients are not listed in `.included`."""
        if set(partial) != set(self._sums):
            raise AggregationError(f"partial sums for tensors {sorted(partial)}, expected {sorted(self._sums)}")
        for name, ps in partial.items():
            geo = self._geometry[name]
            if tuple(ps.a.shape) != geo.shape or tuple(ps.c.shape) != geo.shape:
                raise AggregationError(f"partial sums of {name}: A {tuple(ps.a.shape)}, C {tuple(ps.c.shape)}, "
                                       f"expected {geo.shape}")
        broadcast = self.rule.kind == "broadcast"
        self._merge_sums({name: TensorSums.from_partial(self._geometry[name], ps, self.dtype,
                                                        self._flat_params(name) if broadcast else None)
                          for name, ps in partial.items()})
        self._empty = False

    def merge(self, other: Accumulator) -> None:
        """Add another accumulator's sums and client lists (same global model, layout and rule)."""
        if other is self or other.layout != self.layout or other.rule != self.rule:
            raise AggregationError("only accumulators over the same layout and rule merge")
        if any(not torch.equal(self._params[n], other._params[n]) for n in self.layout.names):
            raise AggregationError("accumulators over different global parameters do not merge")
        again = self._seen() & other._seen()
        if again:
            raise AggregationError(f"client {min(again)}: sent more than one update this round")
        self._merge_sums(other._sums)
        self.included += other.included
        self.excluded.update(other.excluded)
        self._empty = self._empty and other._empty

    # -- finalize ---------------------------------------------------------------------------------
    def finalize(self) -> AggregationResult:
        """The new global parameters, fresh, in the inputs' array type (torch, numpy, or the DLPack
        library of e.g. CuPy inputs, shared without a copy);
        AggregationOverflow if the weighted sums of finite updates overflowed."""
        new: dict[str, Tensor] = {}
        overflowed: list[str] = []
        with nvtx_range("aggregate.finalize"):
            for name, geo in self._geometry.items():
                with nvtx_range(f"aggregate.{self.backend}.finalize:{name}"):
                    out = self._backend.finalize(self._flat_params(name), self._sums[name], self.rule)
                new[name] = out.to(self._params[name].dtype).reshape(geo.shape)
                if not self._all_finite(out, new[name]) and torch.isfinite(self._params[name]).all():
                    overflowed.append(name)  # finite inputs, non-finite sums
        if overflowed:
            raise AggregationOverflow(overflowed)
        # the inputs' array type: numpy or DLPack arrays, which AggregationResult.params (tensors) does not express
        params: dict[str, Any] = {name: self._array_type.wrap(t) for name, t in new.items()}
        return AggregationResult(
            params=params, included=list(self.included), excluded=dict(self.excluded), backend=self.backend
        )

    # -- helpers ---------------------------------------------------------------------------------
    def _all_finite(self, out: Tensor, cast: Tensor) -> bool:
        """`out` (accumulation dtype) by the backend's one-pass check; its cast too where the
        parameters are a narrower type (a cast to half can overflow on its own)."""
        return self._backend.all_finite(out) and (cast.dtype == out.dtype or bool(torch.isfinite(cast).all()))

    def _zero_sums(self, device: torch.device) -> dict[str, TensorSums]:
        return {name: TensorSums.zeros(geo, self.dtype, device) for name, geo in self._geometry.items()}

    def _merge_sums(self, other: Mapping[str, TensorSums]) -> None:
        for name, sums in other.items():
            self._sums[name].add_(sums)

    def _flat_params(self, name: str) -> Tensor:
        return self._geometry[name].flat(self._params[name])

    def _nbytes(self) -> int:
        return sum(s.a.numel() * s.a.element_size() for s in self._sums.values())

    def _seen(self) -> set[int]:
        return set(self.included) | set(self.excluded)

    def _client_update(self, update: Update, position: int) -> ClientUpdate:
        client = update.client if update.client is not None else len(self.included) + len(self.excluded) + position
        return client_update(update, self.layout, client)


def _non_finite(stack: ClientStack, which: Tensor) -> dict[str, Tensor]:
    """Per tensor, bool [n]: which of the clients selected by `which` hold a NaN/Inf there
    (no entry when none is selected)."""
    out: dict[str, Tensor] = {}
    if not which.any():
        return out
    for name, piece in stack.slices.items():
        if isinstance(piece, FactoredSlice):
            out[name] = piece.factors.non_finite_clients() & which
        elif which.all():
            out[name] = non_finite_clients(piece.data)
        else:
            out[name] = torch.zeros(len(stack.clients), dtype=torch.bool)
            out[name][which] = non_finite_clients(piece.data[which.to(piece.data.device)])
    return out


def _any(flags: Mapping[str, Tensor], n: int) -> Tensor:
    bad = torch.zeros(n, dtype=torch.bool)
    for f in flags.values():
        bad |= f
    return bad
