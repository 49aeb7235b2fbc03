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
    """Accumulates seconds per phase name; `reset()` starts a new round."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        with nvtx.annotate(f"fedbrb:{name}", domain="fedbrb_fast"):
            try:
                yield
            finally:
                self.seconds[name] += time.perf_counter() - start

    def reset(self) -> dict[str, float]:
        out = {p: self.seconds.get(p, 0.0) for p in PHASES}
        out.update({k: v for k, v in self.seconds.items() if k not in out})
        self.seconds = defaultdict(float)
        return out
