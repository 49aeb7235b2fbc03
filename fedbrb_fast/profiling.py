"""Wall time per phase (plan, gather, train, aggregate, evaluate) with NVTX ranges.

The `nvtx` package is a no-op without a GPU, so ranges cost ~1 us on CPU and show up in
Nsight Systems when a GPU run is profiled.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator

import nvtx

PHASES = ("plan", "gather", "train", "aggregate", "evaluate")


class PhaseTimer:
    """Accumulates seconds per phase name; `reset()` starts a new round. A phase entered inside
    another pauses it (aggregation that pulls chunks from training counts only its own time), so
    the phases add up to the time spent in any of them."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._open: list[str] = []
        self._since = 0.0

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._switch()
        self._open.append(name)
        with nvtx.annotate(f"fedbrb:{name}", domain="fedbrb_fast"):
            try:
                yield
            finally:
                self._switch()
                self._open.pop()

    def _switch(self) -> None:
        """Charge the time since the last switch to the innermost open phase."""
        now = time.perf_counter()
        if self._open:
            self.seconds[self._open[-1]] += now - self._since
        self._since = now

    def reset(self) -> dict[str, float]:
        out = {p: self.seconds.get(p, 0.0) for p in PHASES}
        out.update({k: v for k, v in self.seconds.items() if k not in out})
        self.seconds = defaultdict(float)
        return out
