"""A run's output folder: resolved config, per-round metrics (JSONL + CSV), final summary, and
the vocabulary of a run on token data."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import ExperimentConfig, config_to_toml
from ..profiling import PHASES
from .atomic import append_lines_together, atomic_write_text

VOCABULARY = "vocabulary.json"
METRIC_COLUMNS = ("round", "method", "accuracy", "loss", "perplexity", "train_loss", "lr", "lam", "clients",
                  "dropped", "excluded", *(f"sec_{p}" for p in (*PHASES, "total")))


class RunWriter:
    def __init__(self, out_dir: str | Path) -> None:
        self.dir = Path(out_dir)

    @property
    def metrics_jsonl(self) -> Path:
        return self.dir / "metrics.jsonl"

    @property
    def metrics_csv(self) -> Path:
        return self.dir / "metrics.csv"

    @property
    def events_jsonl(self) -> Path:
        return self.dir / "events.jsonl"

    def start(self, cfg: ExperimentConfig, vocabulary: str | None = None) -> None:
        """A fresh run: the resolved config, the vocabulary of token data (vocabulary.json), and
        empty metrics and event logs (CSV with its header)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.dir / "config.toml", config_to_toml(cfg))
        if vocabulary is not None:
            atomic_write_text(self.dir / VOCABULARY, json.dumps({"vocabulary": vocabulary}) + "\n")
        self.restore([], [])

    def restore(self, rows: list[dict[str, Any]], events: list[dict[str, Any]]) -> None:
        """Rewrite the logs to hold exactly `rows` and `events` (resuming drops whatever a crash
        left after the checkpoint)."""
        atomic_write_text(self.metrics_jsonl, "".join(json.dumps(_clean(r), sort_keys=True) + "\n" for r in rows))
        atomic_write_text(
            self.metrics_csv, ",".join(METRIC_COLUMNS) + "\n" + "".join(_csv_line(r) + "\n" for r in rows)
        )
        atomic_write_text(self.events_jsonl, "".join(json.dumps(e, sort_keys=True) + "\n" for e in events))

    def append(self, row: dict[str, Any], events: Sequence[dict[str, Any]] = ()) -> None:
        """One round's records, in all three logs or (on a write error) in none of them."""
        append_lines_together(
            [
                *((self.events_jsonl, json.dumps(e, sort_keys=True)) for e in events),
                (self.metrics_jsonl, json.dumps(_clean(row), sort_keys=True)),
                (self.metrics_csv, _csv_line(row)),
            ]
        )

    def finish(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.dir / "summary.json", json.dumps(_clean(summary), indent=2, sort_keys=True) + "\n")


def _csv_line(row: dict[str, Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(["" if row.get(c) is None else row.get(c) for c in METRIC_COLUMNS])
    return buf.getvalue()


def _clean(value: Any) -> Any:
    """JSON has no NaN/Inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def read_vocabulary(folder: str | Path) -> str | None:
    """The vocabulary a run in `folder` saved, or None when it saved none (feature data); ValueError
    when the file cannot be read as one."""
    path = Path(folder) / VOCABULARY
    if not path.is_file():
        return None
    try:
        vocabulary = json.loads(path.read_text())["vocabulary"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a vocabulary record ({type(exc).__name__}: {exc})") from None
    if not isinstance(vocabulary, str):
        raise ValueError(f"{path}: not a vocabulary record (the vocabulary is a {type(vocabulary).__name__})")
    return vocabulary


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSONL log. A last line without its newline is a write cut short by a crash and
    is ignored; every complete line is a whole record."""
    text = Path(path).read_text()
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Final and best accuracy, final loss, and wall time per phase over the run."""
    evaluated = [r for r in rows if r.get("accuracy") is not None]
    last = evaluated[-1] if evaluated else {}
    phase_keys = sorted({k for r in rows for k in r if k.startswith("sec_")})
    return {
        "method": rows[0]["method"] if rows else None,
        "rounds": rows[-1]["round"] if rows else 0,
        "final_accuracy": last.get("accuracy"),
        "best_accuracy": max((r["accuracy"] for r in evaluated), default=None),
        "final_loss": last.get("loss"),
        "dropped_clients": sum(r.get("dropped", 0) for r in rows),
        "excluded_updates": sum(r.get("excluded", 0) for r in rows),
        "seconds": {k.removeprefix("sec_"): sum(r.get(k, 0.0) or 0.0 for r in rows) for k in phase_keys},
    }
