"""Experiment suites: scenarios x methods x FedBRB variants x seeds on identical data, summarized
as mean ± std, with coverage replay, figures and the generated results report."""

from .claims import Pair, Verdict, ordering_verdicts, overall, smallest_only_verdicts, tally
from .coverage import Coverage, replay_coverage
from .execute import run_suite
from .report import ReportError, load_summaries, write_report
from .stats import mean_curve, mean_std
from .suite import RunSpec, Suite, SuiteError, expand_runs, load_suite

__all__ = [
    "Coverage", "Pair", "ReportError", "RunSpec", "Suite", "SuiteError", "Verdict", "expand_runs", "load_suite",
    "load_summaries",
    "mean_curve", "mean_std", "ordering_verdicts", "overall", "replay_coverage", "run_suite",
    "smallest_only_verdicts", "tally", "write_report",
]
