"""Run outputs: atomic files, metrics logs, comparison table and plot."""

from .atomic import append_line, atomic_write_bytes, atomic_write_text
from .report import comparison_table, plot_accuracy
from .run_writer import METRIC_COLUMNS, RunWriter, read_metrics, summarize

__all__ = [
    "METRIC_COLUMNS", "RunWriter", "append_line", "atomic_write_bytes", "atomic_write_text", "comparison_table",
    "plot_accuracy", "read_metrics", "summarize",
]
