"""Extraction plans: client sampling, widths, and per-method channel index sets."""

from .coverage import LayoutCoverage, element_coverage, layout_coverage, tile_coverage
from .extraction import (
    ClientPlan,
    check_fedbrb_blocks,
    fedbrb_indices,
    in_every_segment,
    make_round_plans,
    rolling_block_start,
    window,
)
from .sampling import assign_widths, sample_clients
from .shear import Shear, diagonal_only_tensors, group_adjacency, is_chain, shear_coefficients

__all__ = [
    "ClientPlan", "LayoutCoverage", "Shear", "assign_widths", "check_fedbrb_blocks", "diagonal_only_tensors",
    "element_coverage", "fedbrb_indices", "group_adjacency", "in_every_segment", "is_chain", "layout_coverage",
    "make_round_plans", "rolling_block_start", "sample_clients", "shear_coefficients", "tile_coverage", "window",
]
