"""Aggregation: the rules of SPEC §5 (plain-torch reference), their input validation, and the fused
backends behind one dispatch (streaming `Accumulator`, framework-agnostic `aggregate_arrays`)."""

from .accumulator import Accumulator
from .api import aggregate_arrays
from .backends import BACKENDS
from .portable import Update, tensor_layout
from .rules import AggregationResult, AggregationRule, aggregate, rule_for_method
from .sums import PartialSums
from .updates import AggregationError, AggregationOverflow, ClientBatch, ClientUpdate, as_updates, non_finite_tensors, validate_updates

__all__ = [
    "BACKENDS", "Accumulator", "AggregationError", "AggregationOverflow", "AggregationResult", "AggregationRule", "ClientBatch",
    "ClientUpdate", "PartialSums", "Update", "aggregate", "aggregate_arrays", "as_updates", "non_finite_tensors",
    "rule_for_method", "tensor_layout", "validate_updates",
]
