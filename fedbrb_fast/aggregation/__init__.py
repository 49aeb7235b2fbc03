"""Aggregation: the rules of SPEC §5 (plain-torch reference) and their input validation."""

from .rules import AggregationResult, AggregationRule, aggregate, rule_for_method
from .updates import AggregationError, ClientBatch, ClientUpdate, as_updates, non_finite_tensors, validate_updates

__all__ = [
    "AggregationError", "AggregationResult", "AggregationRule", "ClientBatch", "ClientUpdate", "aggregate", "as_updates",
    "non_finite_tensors", "rule_for_method", "validate_updates",
]
