"""Aggregation: the rules of docs/algorithm.md#aggregation (plain-torch reference), their input
validation, and the fused backends behind one dispatch (`aggregate`, the streaming `Accumulator`,
framework-agnostic `aggregate_arrays`)."""

from ..models.factored import FactoredStack, as_dense
from .accumulator import Accumulator
from .api import aggregate, aggregate_arrays
from .backends import BACKENDS
from .errors import AggregationError, AggregationOverflow
from .portable import SlicedAxes, Update, tensor_layout
from .rule import AggregationResult, AggregationRule, own_update_share, rule_for_method
from .sums import PartialSums
from .updates import ClientBatch, ClientUpdate, as_updates
from .validation import non_finite_tensors, validate_updates

__all__ = [
    "BACKENDS",
    "Accumulator",
    "AggregationError",
    "AggregationOverflow",
    "AggregationResult",
    "AggregationRule",
    "ClientBatch",
    "ClientUpdate",
    "FactoredStack",
    "PartialSums",
    "SlicedAxes",
    "Update",
    "aggregate",
    "aggregate_arrays",
    "as_dense",
    "as_updates",
    "non_finite_tensors",
    "own_update_share",
    "rule_for_method",
    "tensor_layout",
    "validate_updates",
]
