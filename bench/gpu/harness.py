"""What every check of the GPU check uses: its context (device, sizes, time left), a recorder of
cases, figures and skipped parts, relative errors, poisoned outputs and interleaved timing.

A check is a function `check(ctx, rec)`. It records each correctness case with `rec.case` (the
relative error is printed at once), its figures with `rec.metric`, what it leaves out with
`rec.skip`; it raises `Skip` when nothing of it can run here. The driver runs each check in its
own process and turns the recorder into the check's entry of gpu_check.json.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


class Skip(Exception):
    """Nothing of this check can run here (the message says why)."""


@dataclass(frozen=True)
class Context:
    dry_run: bool
    device: torch.device  # cuda on the GPU machine, cpu in a dry run
    work_dir: Path  # scratch space shared by the checks of one run
    deadline: float  # time.monotonic() by which this check must be done
    seed: int  # fresh per run; recorded so a failing case can be replayed
    earlier: Mapping[str, dict] = field(default_factory=dict)  # results of the checks run before this one

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def generator(self, salt: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + salt)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)


@dataclass
class Recorder:
    name: str
    cases: list[dict] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    summary: str = ""

    def case(self, label: str, error: float, tolerance: float, **extra: Any) -> bool:
        """One correctness case: `error` (relative, inf for NaN/unwritten output) within `tolerance`."""
        ok = error <= tolerance
        self.cases.append({"case": label, "relative_error": _json_float(error), "tolerance": tolerance, "ok": ok,
                           **extra})
        print(f"  {'ok  ' if ok else 'FAIL'} {label}: relative error {error:.2e} (tolerance {tolerance:.0e})",
              flush=True)
        if not ok:
            self.failures.append(f"{label}: relative error {error:.2e} > {tolerance:.0e}")
        return ok

    def require(self, condition: bool, what: str) -> bool:
        """A yes/no correctness condition (e.g. poisoned memory outside the outputs left untouched)."""
        print(f"  {'ok  ' if condition else 'FAIL'} {what}", flush=True)
        self.cases.append({"case": what, "ok": bool(condition)})
        if not condition:
            self.failures.append(what)
        return condition

    def metric(self, key: str, value: Any) -> None:
        self.metrics[key] = value

    def skip(self, part: str, reason: str) -> None:
        print(f"  skip {part}: {reason}", flush=True)
        self.skipped.append({"part": part, "reason": reason})

    def fail(self, message: str) -> None:
        print(f"  FAIL {message}", flush=True)
        self.failures.append(message)


def relative_error(got: Tensor, want: Tensor, where: Tensor | None = None) -> float:
    """max |got - want| / max |want| over `where` (all elements by default), in float64 on the CPU;
    inf if `got` holds a NaN or Inf there (an unwritten poisoned output, or an overflow)."""
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    if where is not None:
        where = where.cpu()
        got, want = got[where], want[where]
    if got.shape != want.shape:
        raise ValueError(f"shapes differ: {tuple(got.shape)} vs {tuple(want.shape)}")
    if got.numel() == 0:
        return 0.0
    if not torch.isfinite(got).all():
        return math.inf
    scale = float(want.abs().max())
    return float((got - want).abs().max()) / (scale if scale > 0 else 1.0)


def poisoned(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype, device: torch.device) -> Tensor:
    """An output buffer full of NaN: any element a kernel should write and does not stays NaN."""
    return torch.full(tuple(shape), float("nan"), dtype=dtype, device=device)


def poison_allocator(device: torch.device, megabytes: int = 512) -> bool:
    """Fill the CUDA caching allocator's free memory with NaN, so outputs that an API allocates
    with torch.empty start as NaN. Returns whether a fresh torch.empty came back NaN (no-op on CPU)."""
    if device.type != "cuda":
        return False
    torch.cuda.synchronize(device)
    blocks = [torch.full((megabytes << 18,), float("nan"), device=device)]  # large pool
    blocks += [torch.full((1 << 18,), float("nan"), device=device) for _ in range(64)]  # small pool (1 MB each)
    torch.cuda.synchronize(device)
    del blocks
    probe = torch.empty(1 << 16, device=device)
    return bool(torch.isnan(probe).all())


@dataclass(frozen=True)
class Timing:
    """Seconds per call of one contestant over interleaved repetitions."""

    samples: list[float]

    @property
    def best(self) -> float:
        return min(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def as_dict(self) -> dict[str, Any]:
        return {"best_s": self.best, "median_s": self.median, "reps": len(self.samples)}


def interleaved(contestants: Mapping[str, Callable[[], object]], sync: Callable[[], None], *, reps: int = 5,
                min_sample_s: float = 0.005) -> dict[str, Timing]:
    """Time each contestant A B C A B C ... `reps` times (after a warm-up call each); a fast call
    is repeated within a sample so that the sample lasts about `min_sample_s` (sized by one more
    call), and the sample divided."""
    inner = {}
    for name, fn in contestants.items():
        fn()  # warm-up: compilation, caches, allocator
        sync()
        inner[name] = 1
        if min_sample_s > 0:
            start = time.perf_counter()
            fn()
            sync()
            once = time.perf_counter() - start
            inner[name] = max(1, min(1000, math.ceil(min_sample_s / max(once, 1e-7))))
    samples: dict[str, list[float]] = {name: [] for name in contestants}
    for _ in range(reps):
        for name, fn in contestants.items():
            sync()
            start = time.perf_counter()
            for _ in range(inner[name]):
                fn()
            sync()
            samples[name].append((time.perf_counter() - start) / inner[name])
    return {name: Timing(s) for name, s in samples.items()}


def _json_float(x: float) -> float | str:
    return x if math.isfinite(x) else ("inf" if x > 0 else "nan")
