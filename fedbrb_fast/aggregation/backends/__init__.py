"""The aggregation backends behind one dispatch, and how `auto` picks one.

`auto` takes the first available backend in the device's order of measured speed: CPU: numba,
torch; CUDA: cuda, triton, torch (figures in docs/aggregation.md). `cupy` (the csrc/ kernels
compiled by NVRTC) is chosen only by name.
"""

from __future__ import annotations

import logging
import os

import torch

from ...optional import available, install_hint
from ..errors import AggregationError
from .base import Backend

BACKENDS = ("reference", "torch", "numba", "triton", "cuda", "cupy", "auto")
CPU_BACKENDS = ("reference", "torch", "numba")
AUTO_ORDER = {"cpu": ("numba", "torch"), "cuda": ("cuda", "triton", "torch")}

log = logging.getLogger(__name__)


def get_backend(name: str, device: torch.device) -> Backend:
    """The streaming backend `name` for tensors on `device` (AggregationError if unknown or unavailable)."""
    if name not in BACKENDS:
        raise AggregationError(f"unknown aggregation backend {name!r}; expected one of {BACKENDS}")
    if name == "reference":
        raise AggregationError("backend 'reference' is the plain-torch rule of aggregate(); streaming accumulation "
                               f"runs on one of {BACKENDS[1:]}")
    if name == "auto":
        order = AUTO_ORDER.get(device.type, ("torch",))
        name = next(n for n in order if unavailable_reason(n, device) is None)
        log.info("aggregation backend auto -> %s on %s", name, device)
    reason = unavailable_reason(name, device)
    if reason:
        raise AggregationError(f"aggregation backend {name!r} is not available: {reason}")
    return _load(name)


def unavailable_reason(name: str, device: torch.device) -> str | None:
    """Why backend `name` cannot run on `device`, or None when it can."""
    if name in ("triton", "cuda", "cupy"):
        interpreted = name == "triton" and os.environ.get("TRITON_INTERPRET") == "1" and device.type == "cpu"
        if not torch.cuda.is_available() and not interpreted:
            return f"it needs a CUDA GPU and none is available; CPU backends: {', '.join(CPU_BACKENDS)}"
        if device.type != "cuda" and not interpreted:
            return f"it runs on CUDA tensors and the global parameters are on {device}; move them to the GPU"
        if name == "triton" and not available("triton"):
            return install_hint("triton", "the triton aggregation backend")
        if name == "cupy" and not available("cupy"):
            return install_hint("cupy", "the cupy aggregation backend")
        if name == "cuda":
            return _cuda_build_failure()
        if name == "cupy":
            return _nvrtc_build_failure()
    if name == "numba":
        if device.type != "cpu":
            return f"it runs on CPU tensors and the global parameters are on {device}"
        if not available("numba"):
            return install_hint("numba", "the numba aggregation backend")
    return None


def _cuda_build_failure() -> str | None:
    from .cuda_backend import extension

    try:
        extension()
    except Exception as exc:  # a missing nvcc or compiler surfaces as many exception types
        return f"building the CUDA extension from csrc/ failed: {exc}"
    return None


def _nvrtc_build_failure() -> str | None:
    from .cupy_kernels import nvrtc_kernels

    try:
        nvrtc_kernels()
    except Exception as exc:  # CuPy, NVRTC and driver failures have many exception types
        return f"compiling the csrc/ kernels with NVRTC (CuPy) failed: {exc}"
    return None


def _load(name: str) -> Backend:
    """Import a backend's module only when it is used: numba, triton and the CUDA build are slow to load."""
    if name == "torch":
        from .torch_backend import TorchBackend

        return TorchBackend()
    if name == "numba":
        from .numba_backend import NumbaBackend

        return NumbaBackend()
    if name == "triton":
        from .triton_backend import TritonBackend

        return TritonBackend()
    from .cuda_backend import CudaBackend

    if name == "cupy":
        from .cupy_kernels import nvrtc_kernels

        return CudaBackend(nvrtc_kernels(), name="cupy")
    return CudaBackend()
