"""Causal attention on the CPU for small head dimensions, beside its plain-torch reference.

`causal_attention_reference` is PyTorch's fused `scaled_dot_product_attention`. At head dimension
4 (a Transformer's heads at width 1/8) it took about 70% of a batched round, because its kernel
vectorizes along the head dimension. `causal_attention_lanes` runs csrc/causal_attention_cpu.cpp
instead: each SIMD lane is one (sequence, head) pair. It is float32 only, for head dimensions
HEAD_DIMS. `causal_attention` picks between them.

The C++ source is compiled on first use with the host's C++ compiler (`$CXX`, else g++) for the
host CPU (-march=native). The shared library is cached under `$FEDBRB_FAST_CACHE` (default
~/.cache/fedbrb_fast), keyed by source, flags, compiler and CPU. Without a compiler, or with
FEDBRB_FAST_CPU_ATTENTION=sdpa, `causal_attention` uses the reference and warns once.

All three functions take q, k, v of shape [S, L, H, D] (S sequences, L positions, H heads) and
return [S, L, H, D].
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

SOURCE = "causal_attention_cpu.cpp"
HEAD_DIMS = (2, 4, 8)  # where the lanes kernel beats the reference (bench/bench_attention.py)
CXXFLAGS = ("-O3", "-march=native", "-std=c++17", "-fopenmp", "-shared", "-fPIC")
ENV_SWITCH = "FEDBRB_FAST_CPU_ATTENTION"  # "sdpa": always the reference


def causal_attention_reference(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
    return out.transpose(1, 2)


def causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """The lanes kernel where it applies (CPU, float32, head dimension in HEAD_DIMS, a compiled
    library), else the reference."""
    if not (q.device.type == "cpu" and q.dtype == torch.float32 and q.shape[-1] in HEAD_DIMS):
        return causal_attention_reference(q, k, v)
    reason = lanes_unavailable()
    if reason is not None:
        _warn_fallback(reason)
        return causal_attention_reference(q, k, v)
    return causal_attention_lanes(q, k, v)


def causal_attention_lanes(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    if q.shape != k.shape or q.shape != v.shape or q.dim() != 4:
        raise ValueError(f"q, k, v must share one [S, L, H, D] shape; got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if q.dtype != torch.float32 or k.dtype != q.dtype or v.dtype != q.dtype or q.device.type != "cpu":
        raise ValueError(f"the lanes kernel takes float32 CPU tensors; got {q.dtype} on {q.device}")
    if q.shape[-1] not in HEAD_DIMS:
        raise ValueError(f"the lanes kernel is compiled for head dimensions {HEAD_DIMS}, not {q.shape[-1]}")
    out: Tensor = _LanesAttention.apply(q, k, v)
    return out


@cache
def lanes_unavailable() -> str | None:
    """Why the lanes kernel cannot run here (None when it can)."""
    if os.environ.get(ENV_SWITCH, "").lower() == "sdpa":
        return f"{ENV_SWITCH}=sdpa"
    try:
        _library()
    except (OSError, RuntimeError) as exc:
        return str(exc)
    return None


@cache
def _warn_fallback(reason: str) -> None:
    warnings.warn(f"causal attention: the CPU lanes kernel is unavailable ({reason}); using "
                  "torch's scaled_dot_product_attention, which is slower at small head dimensions",
                  RuntimeWarning, stacklevel=3)


def _cache_dir() -> Path:
    return Path(os.environ.get("FEDBRB_FAST_CACHE", Path.home() / ".cache" / "fedbrb_fast"))


def _cpu_identity() -> str:
    """-march=native code runs only where the CPU has the same features."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next((line for line in lines if line.startswith(("flags", "Features"))), platform.processor())
    except OSError:
        return platform.machine() + platform.processor()


@cache
def _library() -> ctypes.CDLL:
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler {compiler!r} on PATH (set CXX)")
    source = files("fedbrb_fast.csrc").joinpath(SOURCE).read_bytes()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False).stdout
    key = hashlib.sha256(b"\0".join([source, " ".join(CXXFLAGS).encode(), version.encode(),
                                     _cpu_identity().encode()])).hexdigest()[:16]
    path = _cache_dir() / f"causal_attention_cpu-{key}.so"
    if not path.exists():
        _compile(compiler, source, path)
    lib = ctypes.CDLL(str(path))
    ptr, i64, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
    forward: list[Any] = [ptr, ptr, ptr, i64, i64, i64, ptr, ptr] + [i64] * 5 + [f32]
    backward: list[Any] = [ptr, ptr, ptr, i64, i64, i64, ptr, ptr, i64, i64, i64, ptr, ptr, ptr, ptr]
    backward += [i64] * 5 + [f32]
    lib.fedbrb_attention_forward.argtypes, lib.fedbrb_attention_backward.argtypes = forward, backward
    lib.fedbrb_attention_forward.restype = lib.fedbrb_attention_backward.restype = ctypes.c_int
    lib.fedbrb_attention_lanes.argtypes, lib.fedbrb_attention_lanes.restype = [], ctypes.c_int
    return lib


def _compile(compiler: str, source: bytes, path: Path) -> None:
    """Compiles into a temporary file beside `path`, then renames it: a concurrent or interrupted
    build never leaves a partial library under the cached name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        src, lib = Path(tmp) / SOURCE, Path(tmp) / path.name
        src.write_bytes(source)
        done = subprocess.run([compiler, *CXXFLAGS, str(src), "-o", str(lib)], capture_output=True, text=True,
                              check=False)
        if done.returncode != 0:
            raise RuntimeError(f"compiling {SOURCE} with {compiler} failed: {done.stderr.strip()[-2000:]}")
        os.replace(lib, path)


def _check(code: int) -> None:
    if code != 0:
        raise RuntimeError("the lanes attention kernel has no variant for this head dimension")


def _unit_last(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


class _LanesAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        lib = _library()
        q, k, v = (_unit_last(t.detach()) for t in (q, k, v))
        if not (q.stride() == k.stride() == v.stride()):
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        s, length, heads, dim = q.shape
        lanes = int(lib.fedbrb_attention_lanes())
        groups = -(-s * heads // lanes)
        out = torch.empty(s, length, heads, dim)
        lse = torch.empty(groups, length, lanes)
        scale = 1.0 / math.sqrt(dim)
        _check(lib.fedbrb_attention_forward(q.data_ptr(), k.data_ptr(), v.data_ptr(), *q.stride()[:3], out.data_ptr(),
                                            lse.data_ptr(), s, length, heads, dim, torch.get_num_threads(), scale))
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v, out, lse = ctx.saved_tensors
        grad = _unit_last(grad)
        s, length, heads, dim = q.shape
        dq, dk, dv = (torch.empty(s, length, heads, dim) for _ in range(3))
        _check(_library().fedbrb_attention_backward(
            q.data_ptr(), k.data_ptr(), v.data_ptr(), *q.stride()[:3], out.data_ptr(), grad.data_ptr(),
            *grad.stride()[:3], lse.data_ptr(), dq.data_ptr(), dk.data_ptr(), dv.data_ptr(), s, length, heads, dim,
            torch.get_num_threads(), 1.0 / math.sqrt(dim)))
        return dq, dk, dv
