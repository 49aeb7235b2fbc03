"""The errors aggregation raises; both are raised before any global tensor changes."""

from __future__ import annotations

from collections.abc import Sequence


class AggregationError(ValueError):
    """Malformed aggregation input; raised before any global tensor changes."""


class AggregationOverflow(AggregationError):
    """Finite updates whose weighted sums left the float range; the new model is discarded."""

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__(f"global {', '.join(names)}: the weighted sums overflowed (client weights x values exceed "
                         f"the float range); the global model is unchanged. Screen updates with "
                         f"faults.max_update_norm or use smaller weights")
