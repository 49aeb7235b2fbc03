"""The CUDA aggregation kernels of csrc/ compiled at run time by NVRTC through `cupy.RawModule`:
an alternative to the torch extension build (no nvcc, ninja or host compiler; about a second).

`NvrtcKernels` launches the template instances of `csrc/aggregation_device.cuh` on torch CUDA
tensors (raw pointers, on torch's current stream) with the functions and signatures of
kernels/aggregation.py, as the torch binding does. `compile_for_arch` compiles the same source
with NVRTC alone, which needs no GPU and no driver (the tests run it on CPU machines).
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import AggregationError

DEVICE_SOURCE = "aggregation_device.cuh"
OPTIONS = ("-std=c++17",)
# The (value, accumulation) dtype pairs the C launchers dispatch (aggregation_kernels.cu).
DTYPE_PAIRS = ((torch.float32, torch.float32), (torch.float16, torch.float32), (torch.float32, torch.float64),
               (torch.float64, torch.float64))
TYPE_NAMES = {torch.float16: "fedbrb::half_t", torch.float32: "float", torch.float64: "double"}
# Launch shape of aggregation_kernels.cu: 256 threads per block, at most 65535 blocks (grid-stride loops).
THREADS = 256
MAX_BLOCKS = 65535


def scatter_add_name(data: torch.dtype, acc: torch.dtype) -> str:
    return f"fedbrb::scatter_add_kernel<{TYPE_NAMES[data]}, {TYPE_NAMES[acc]}>"


def apply_name(out: torch.dtype, acc: torch.dtype, broadcast: bool) -> str:
    return f"fedbrb::apply_kernel<{TYPE_NAMES[out]}, {TYPE_NAMES[acc]}, {'true' if broadcast else 'false'}>"


def instance_names() -> list[str]:
    """Every template instance the launchers below can ask for (NVRTC name expressions)."""
    return ([scatter_add_name(v, acc) for v, acc in DTYPE_PAIRS]
            + [apply_name(v, acc, b) for v, acc in DTYPE_PAIRS for b in (False, True)])


def source() -> str:
    return (files("fedbrb_fast.csrc") / DEVICE_SOURCE).read_text()


def compile_for_arch(arch: int = 90) -> tuple[bytes, dict[str, str]]:
    """NVRTC alone, for sm_`arch`: the cubin and each instance's lowered (mangled) name."""
    from cupy_backends.cuda.libs import nvrtc  # needs only libnvrtc, no GPU or driver

    prog = nvrtc.createProgram(source(), DEVICE_SOURCE, [], [])
    try:
        for name in instance_names():
            nvrtc.addNameExpression(prog, name)
        try:
            nvrtc.compileProgram(prog, [f"--gpu-architecture=sm_{arch}", *OPTIONS])
        except nvrtc.NVRTCError as exc:
            raise AggregationError(f"NVRTC could not compile {DEVICE_SOURCE}:\n{nvrtc.getProgramLog(prog)}") from exc
        return nvrtc.getCUBIN(prog), {name: nvrtc.getLoweredName(prog, name) for name in instance_names()}
    finally:
        nvrtc.destroyProgram(prog)


@cache
def nvrtc_kernels() -> NvrtcKernels:
    """Compiled once per process for the current GPU (raises without CuPy, a GPU or NVRTC)."""
    return NvrtcKernels()


class NvrtcKernels:
    def __init__(self) -> None:
        import cupy  # imported here: only GPU machines use this path

        self._cupy = cupy
        self._module = cupy.RawModule(code=source(), options=OPTIONS, name_expressions=instance_names())
        self._module.compile()  # now, so a failure surfaces when the backend is chosen
        self._functions: dict[str, Any] = {}

    def scatter_add(self, a: Tensor, c: Tensor, data: Tensor, weights: Tensor, rows: Tensor, cols: Tensor, inner: int,
                    mask: Tensor | None = None) -> None:
        acc = a.dtype
        data = data.contiguous()
        weights = weights.to(acc).contiguous()
        mask = mask.to(acc).contiguous() if mask is not None else None
        rows, cols = _unit_stride(rows), _unit_stride(cols)
        _check(a, c, data, weights, rows, cols, *(() if mask is None else (mask,)))
        if not (a.is_contiguous() and c.is_contiguous()) or c.dtype != acc:
            raise AggregationError("a and c must be contiguous and share one dtype")
        if rows.dtype != torch.int64 or cols.dtype != torch.int64:
            raise AggregationError("index sets must be int64")
        _check_pair(data.dtype, acc)
        n, k_rows, k_width = data.shape
        total = n * k_rows * k_width
        if total == 0:
            return
        i64 = np.int64
        self._launch(a, scatter_add_name(data.dtype, acc), total,
                     _ptr(a), _ptr(c), _ptr(data), _ptr(mask), _ptr(weights), _ptr(rows), _ptr(cols),
                     i64(total), i64(k_rows), i64(k_width), i64(inner), i64(a.shape[1]), i64(rows.stride(0)),
                     i64(cols.stride(0)), i64(c.shape[1]), np.int32(c.shape[0] == 1))

    def apply_overlap(self, p: Tensor, a: Tensor, c: Tensor) -> Tensor:
        return self._apply(p, a, c, a, c, 0.0, broadcast=False)

    def apply_broadcast(self, p: Tensor, a: Tensor, c: Tensor, s: Tensor, w: Tensor, lam: float) -> Tensor:
        return self._apply(p, a, c, s, w, lam, broadcast=True)

    def _apply(self, p: Tensor, a: Tensor, c: Tensor, s: Tensor, w: Tensor, lam: float, broadcast: bool) -> Tensor:
        p, a, c, s, w = (t.contiguous() for t in (p, a, c, s, w))
        _check(p, a, c, s, w)
        _check_pair(p.dtype, a.dtype)
        out = torch.empty(a.shape, dtype=p.dtype, device=a.device)
        numel = a.numel()
        if numel == 0:
            return out
        scalar = np.float32 if a.dtype == torch.float32 else np.float64
        i64 = np.int64
        self._launch(a, apply_name(p.dtype, a.dtype, broadcast), numel,
                     _ptr(out), _ptr(p), _ptr(a), _ptr(c), _ptr(s), _ptr(w), i64(numel), i64(a.shape[1]),
                     np.int32(c.shape[0] > 1), i64(c.shape[1]), i64(s.shape[0]), i64(s.shape[1]), i64(w.shape[0]),
                     i64(w.shape[1]), scalar(lam), scalar(torch.finfo(a.dtype).tiny))
        return out

    def _launch(self, like: Tensor, name: str, work: int, *args: Any) -> None:
        if name not in self._functions:
            self._functions[name] = self._module.get_function(name)
        blocks = min(max((work + THREADS - 1) // THREADS, 1), MAX_BLOCKS)
        cupy = self._cupy
        stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(like.device).cuda_stream, like.device.index)
        with cupy.cuda.Device(like.device.index), stream:
            self._functions[name]((blocks,), (THREADS,), args)


def _ptr(t: Tensor | None) -> np.uint64:
    """A device pointer as a kernel argument (8 bytes by value); NULL for a missing tensor."""
    return np.uint64(0 if t is None else t.data_ptr())


def _unit_stride(index: Tensor) -> Tensor:
    """Index sets with unit stride along positions; a stride-0 client axis (a whole axis) is kept."""
    return index if index.stride(-1) == 1 else index.contiguous()


def _check_pair(value: torch.dtype, acc: torch.dtype) -> None:
    if (value, acc) not in DTYPE_PAIRS:
        pairs = [(str(v), str(a)) for v, a in DTYPE_PAIRS]
        raise AggregationError(f"the kernels support (value, accumulation) dtypes {pairs}, got ({value}, {acc})")


def _check(*tensors: Tensor) -> None:
    device = tensors[0].device
    if device.type != "cuda" or any(t.device != device for t in tensors):
        raise AggregationError(f"the NVRTC kernels run on CUDA tensors of one device, got "
                               f"{sorted({str(t.device) for t in tensors})}")
    dtypes = {t.dtype for t in tensors if t.is_floating_point()}
    if not dtypes <= set(TYPE_NAMES):
        raise AggregationError(f"unsupported dtypes {sorted(map(str, dtypes - set(TYPE_NAMES)))}")
