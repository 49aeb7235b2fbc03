"""Extraction plans: client sampling, widths, and per-method channel index sets."""

from .coverage import element_coverage, tile_coverage
from .extraction import ClientPlan, fedbrb_indices, make_round_plans, rolling_block_start, window
from .sampling import assign_widths, sample_clients

__all__ = [
    "ClientPlan", "assign_widths", "element_coverage", "fedbrb_indices", "make_round_plans",
    "rolling_block_start", "sample_clients", "tile_coverage", "window",
]
