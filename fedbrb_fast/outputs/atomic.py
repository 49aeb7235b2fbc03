"""Crash-safe file writes: whole files appear atomically, appended lines are whole or absent.

A failed write raises OutputWriteError naming the file; what the file held before stays intact."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path


def _process_umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it: once, at import
    os.umask(mask)
    return mask


_UMASK = _process_umask()


class OutputWriteError(OSError):
    """Writing an output file failed (disk full, I/O error, no permission): the OSError's errno
    and reason, with the file we were writing as its filename."""

    def __init__(self, path: str | Path, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause), str(path))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`: a reader
    sees the old file or the new one, never a half-written one."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputWriteError(path, exc) from exc
    try:
        try:
            os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes the file private; outputs get the usual mode
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OutputWriteError(path, exc) from exc
        raise
    try:
        _fsync_dir(path.parent)
    except OSError as exc:
        raise OutputWriteError(path.parent, exc) from exc


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def append_line(path: str | Path, line: str) -> None:
    """Append one complete line and fsync it. If the write fails part way (a full disk), the file
    is cut back to its old size: it never ends in a partial line."""
    path = Path(path)
    data = (line.rstrip("\n") + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as exc:
        raise OutputWriteError(path, exc) from exc
    try:
        size = os.fstat(fd).st_size
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):  # if even this fails, readers skip a last partial line
                os.ftruncate(fd, size)
            raise OutputWriteError(path, exc) from exc
    finally:
        os.close(fd)


def append_lines_together(entries: Sequence[tuple[Path, str]]) -> None:
    """Append each (file, line); if any append fails, every file is cut back to its size before
    the call, so the logs never disagree about which records exist."""
    sizes: dict[Path, int] = {}
    try:
        for path, line in entries:
            sizes.setdefault(path, path.stat().st_size if path.exists() else 0)
            append_line(path, line)
    except OSError as exc:
        for done, size in sizes.items():
            with contextlib.suppress(OSError):
                os.truncate(done, size)
        if isinstance(exc, OutputWriteError):
            raise
        raise OutputWriteError(path, exc) from exc


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written == 0:  # a regular file only stops taking bytes when the device is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
