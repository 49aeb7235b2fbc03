"""Wall time per phase (plan, gather, train, aggregate, evaluate) and the NVTX ranges that mark
phases and kernel launches.

The `nvtx` package (extra 'nvtx') is a no-op without a GPU, so ranges cost ~1 us on CPU and show
up in Nsight Systems when a GPU run is profiled; without the package they are plain no-ops. It is
the `nvtx` package rather than torch.cuda.nvtx, which raises on CPU builds.
"""

from __future__ import annotations

import importlib
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import cache
from types import ModuleType

from .optional import available

PHASES = ("plan", "gather", "train", "aggregate", "evaluate")
NVTX_DOMAIN = "fedbrb_fast"


@cache
def _nvtx() -> ModuleType | None:
    return importlib.import_module("nvtx") if available("nvtx") else None


def nvtx_range(message: str) -> AbstractContextManager[object]:
    """An NVTX range named `message` in the fedbrb_fast domain (a no-op without the nvtx package)."""
    nvtx = _nvtx()
    return nullcontext() if nvtx is None else nvtx.annotate(message, domain=NVTX_DOMAIN)


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
        with nvtx_range(f"fedbrb:{name}"):
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
