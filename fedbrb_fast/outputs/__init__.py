"""Run outputs: atomic files, metrics logs, what an output folder holds, comparison table and plot."""

from .atomic import OutputWriteError, append_line, append_lines_together, atomic_write_bytes, atomic_write_text
from .report import comparison_table, plot_accuracy
from .run_folder import (
    CHECKPOINT,
    MODEL,
    SUMMARY,
    FolderContents,
    HeldRun,
    OutputDirError,
    check_writable,
    clear_results,
    held_run,
    survey,
)
from .run_writer import METRIC_COLUMNS, VOCABULARY, RunWriter, read_metrics, read_vocabulary, summarize

__all__ = [
    "CHECKPOINT", "METRIC_COLUMNS", "MODEL", "SUMMARY", "VOCABULARY", "FolderContents", "HeldRun", "OutputDirError",
    "OutputWriteError", "RunWriter", "append_line", "append_lines_together", "atomic_write_bytes", "atomic_write_text",
    "check_writable", "clear_results", "comparison_table", "held_run", "plot_accuracy", "read_metrics",
    "read_vocabulary", "summarize", "survey",
]
