"""One-call aggregation through the fused backends: for the project's updates (`aggregate(...,
backend=...)` lands here) and for framework-agnostic `Update`s over torch or numpy arrays."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..models.layout import ModelLayout
from ..profiling import nvtx_range
from .accumulator import Accumulator
from .batch_validation import check_items
from .portable import Update, sliced_axes_of
from .rules import AggregationResult, AggregationRule
from .updates import ClientBatch, ClientUpdate


def aggregate_with_backend(global_params: Mapping[str, Any], layout: ModelLayout,
                           updates: Sequence[ClientUpdate | ClientBatch], rule: AggregationRule,
                           backend: str) -> AggregationResult:
    """Same checks in the same order as the reference (updates, then the rule's block count)."""
    items = list(updates)
    with nvtx_range("aggregate.validate"):
        check_items(global_params, layout, items)
    acc = Accumulator(global_params, layout, rule, backend=backend)
    acc.add_validated(items)
    return acc.finalize()


def aggregate_arrays(global_params: Mapping[str, Any], updates: Sequence[Update], rule: AggregationRule, *,
                     sliced: Mapping[str, Sequence[int]] | None = None, backend: str = "auto") -> AggregationResult:
    """New global parameters from framework-agnostic updates, in the inputs' array type.

    `sliced[name]`: the axes of each tensor that clients slice (what the broadcast rule tiles);
    by default every axis that some update slices."""
    acc = Accumulator(global_params, sliced if sliced is not None else sliced_axes_of(updates), rule, backend=backend)
    acc.add(updates)
    return acc.finalize()
