"""One entry point for aggregation: the plain-torch reference or a fused backend, for the project's
updates (`aggregate`) and for framework-agnostic `Update`s over torch, numpy or DLPack arrays such as
CuPy's (`aggregate_arrays`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from ..models.layout import ModelLayout
from ..profiling import nvtx_range
from .accumulator import Accumulator
from .portable import SlicedAxes, Update, sliced_axes_of
from .rule import AggregationResult, AggregationRule
from .rules import aggregate_reference
from .updates import ClientBatch, ClientUpdate
from .validation import check_items


def aggregate(global_params: Mapping[str, Tensor], layout: ModelLayout, updates: Sequence[ClientUpdate | ClientBatch],
              rule: AggregationRule, *, backend: str = "reference") -> AggregationResult:
    """Validate everything first, drop non-finite updates, then apply the rule.

    `backend="reference"` runs the plain-torch rule (`rules.py`); "torch", "numba", "triton", "cuda"
    or "auto" (the fastest available on the parameters' device) run the fused backends, which give
    the same result within float tolerance (`AggregationResult.backend` names the one used). Both
    make the same checks in the same order (updates, then the rule's block count)."""
    if backend == "reference":
        return aggregate_reference(global_params, layout, updates, rule)
    items = list(updates)
    with nvtx_range("aggregate.validate"):
        check_items(global_params, layout, items)
    acc = Accumulator(global_params, layout, rule, backend=backend)
    acc.add_validated(items)
    return acc.finalize()


def aggregate_arrays(global_params: Mapping[str, Any], updates: Sequence[Update], rule: AggregationRule, *,
                     sliced: SlicedAxes | None = None, backend: str = "auto") -> AggregationResult:
    """New global parameters from framework-agnostic updates, in the inputs' array type: torch
    tensors, numpy arrays, or DLPack arrays such as CuPy's (read and returned without copies).

    `sliced[name]`: the axes of each tensor that clients slice (what the broadcast rule tiles), a
    list of axes or `{axis: R}` for axes of R equal segments (attention heads); by default every
    axis that some update slices, each of one segment."""
    acc = Accumulator(global_params, sliced if sliced is not None else sliced_axes_of(updates), rule, backend=backend)
    acc.add(updates)
    return acc.finalize()
