"""NVTX ranges around aggregation phases and kernel launches: visible in Nsight Systems on a GPU
run, ~1 us no-ops without one. The `nvtx` package, not torch.cuda.nvtx (which raises on CPU builds)."""

from __future__ import annotations

import nvtx

DOMAIN = "fedbrb_fast"


def nvtx_range(message: str) -> nvtx.annotate:
    return nvtx.annotate(message, domain=DOMAIN)
