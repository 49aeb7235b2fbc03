"""What an output folder already holds (a run, a comparison of runs), whether we may write there,
and removing an earlier run's files when the user asked to replace them."""

from __future__ import annotations

import errno
import os
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ..methods import METHODS
from .run_writer import VOCABULARY, read_metrics

CONFIG = "config.toml"
CHECKPOINT = "checkpoint.safetensors"
MODEL = "model.safetensors"
SUMMARY = "summary.json"
RUN_FILES = (CONFIG, "metrics.jsonl", "metrics.csv", "events.jsonl", CHECKPOINT, MODEL, SUMMARY)  # every run's
TOKEN_RUN_FILES = (VOCABULARY,)  # and a run on token data's
POINTER = "same_as.json"  # a suite's note that a run folder shares another folder's result
COMPARISON_FILES = ("comparison.md", "comparison.json", "accuracy.png")


class OutputDirError(ValueError):
    """An output folder that cannot be used as asked (a file, not writable, or holding results
    that would be replaced); nothing has been written."""


@dataclass(frozen=True)
class HeldRun:
    """A run found in a folder, as far as its files tell."""

    path: Path
    config_text: str | None
    method: str | None
    rounds_done: int | None  # None: the metrics log cannot be read
    rounds_total: int | None
    finished: bool
    has_checkpoint: bool

    def describe(self) -> str:
        """E.g. 'an unfinished fedbrb run (3 of 10 rounds, checkpoint present)'."""
        done = "?" if self.rounds_done is None else str(self.rounds_done)
        total = "?" if self.rounds_total is None else str(self.rounds_total)
        detail = f"{done} of {total} rounds"
        if not self.finished:
            detail += ", checkpoint present" if self.has_checkpoint else ", no checkpoint"
        return f"{'a finished' if self.finished else 'an unfinished'} {self.method or 'unknown-method'} run ({detail})"


@dataclass(frozen=True)
class FolderContents:
    """The results in an output folder: its own run, comparison files, and runs in subfolders."""

    path: Path
    run: HeldRun | None
    comparison_files: tuple[str, ...]
    subruns: tuple[HeldRun, ...]

    @property
    def empty(self) -> bool:
        return self.run is None and not self.comparison_files and not self.subruns

    def describe(self) -> str:
        parts = [self.run.describe()] if self.run is not None else []
        if self.subruns or self.comparison_files:
            runs = "; ".join(f"{r.path.name}/: {r.describe()}" for r in self.subruns) or "no runs"
            parts.append(f"a comparison ({runs})")
        return " and ".join(parts) or "nothing"


def held_run(folder: Path) -> HeldRun | None:
    """The run whose files are in `folder`, or None when there are none."""
    if not folder.is_dir() or not any((folder / name).is_file() for name in (*RUN_FILES, *TOKEN_RUN_FILES)):
        return None
    config_text = _read_text(folder / CONFIG)
    method, total = None, None
    if config_text is not None:
        try:
            raw = tomllib.loads(config_text)
            method, total = raw.get("method", {}).get("name"), raw.get("rounds")
        except (tomllib.TOMLDecodeError, AttributeError):
            pass
    done: int | None = 0
    if (folder / "metrics.jsonl").is_file():
        try:
            rows = read_metrics(folder / "metrics.jsonl")
            done = int(rows[-1]["round"]) if rows else 0
        except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
            done = None
    return HeldRun(path=folder, config_text=config_text, method=method if isinstance(method, str) else None,
                   rounds_done=done, rounds_total=total if isinstance(total, int) else None,
                   finished=(folder / SUMMARY).is_file(), has_checkpoint=(folder / CHECKPOINT).is_file())


def survey(folder: Path) -> FolderContents:
    """What `folder` holds that a new run or comparison written there would replace. Subfolders
    count only under a method's name (where `compare` puts its runs): a folder that merely
    collects runs is not a comparison."""
    if not folder.is_dir():
        return FolderContents(folder, None, (), ())
    subruns = tuple(run for name in sorted(METHODS) if (run := held_run(folder / name)) is not None)
    return FolderContents(folder, held_run(folder),
                          tuple(name for name in COMPARISON_FILES if (folder / name).is_file()), subruns)


def check_writable(folder: Path) -> None:
    """OutputDirError unless we can create files in `folder` (or create it): a file in its place,
    no permission, a read-only file system. Probes with a temporary entry it removes again."""
    existing = folder
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "it" if existing == folder else str(existing)
        raise OutputDirError(f"output folder {str(folder)!r}: {where} is a file, not a folder")
    try:
        if existing == folder:
            fd, probe = tempfile.mkstemp(prefix=".fedbrb-write-check-", dir=folder)
            os.close(fd)
            os.unlink(probe)
        else:
            os.rmdir(tempfile.mkdtemp(prefix=".fedbrb-write-check-", dir=existing))
    except OSError as exc:
        raise OutputDirError(f"output folder {str(folder)!r}: cannot write in {str(existing)!r}: "
                             f"{_reason(exc)}") from None


def clear_results(folder: Path) -> None:
    """Remove what `survey` finds (and temporaries an interrupted write left), so that a new run
    never sits beside an earlier run's files. Files that no run writes are left alone."""
    for run in survey(folder).subruns:
        _remove_run_files(run.path)
        if not any(run.path.iterdir()):
            run.path.rmdir()
    _remove_run_files(folder)


def _remove_run_files(folder: Path) -> None:
    if not folder.is_dir():
        return
    names = (*RUN_FILES, *TOKEN_RUN_FILES, POINTER, *COMPARISON_FILES)
    for name in names:
        (folder / name).unlink(missing_ok=True)
    for name in names:
        for leftover in folder.glob(f".{name}.*.tmp"):
            leftover.unlink(missing_ok=True)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _reason(exc: OSError) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "no permission"
    if exc.errno == errno.EROFS:
        return "read-only file system"
    return exc.strerror or str(exc)
