"""Compiles a C++ kernel source of csrc/ for this host CPU on first use and loads it (ctypes).

Each source is compiled with the host's C++ compiler (`$CXX`, else g++) for the host CPU
(-march=native) and cached under `$FEDBRB_FAST_CACHE` (default ~/.cache/fedbrb_fast), keyed by the
source, the csrc/ headers it includes, the flags, the compiler and the CPU. FEDBRB_FAST_CPU_KERNELS=torch
turns every compiled CPU kernel off (their callers use their plain-torch references).

Loaded into a process that has imported torch, a library built with -fopenmp shares torch's
libgomp (same soname), so its OpenMP loops run on torch's intra-op threads.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import re
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Callable
from functools import cache
from importlib.resources import files
from pathlib import Path

import torch
from torch import Tensor

CXXFLAGS = ("-O3", "-march=native", "-std=c++17", "-fopenmp", "-shared", "-fPIC")
ENV_SWITCH = "FEDBRB_FAST_CPU_KERNELS"  # "torch": no compiled CPU kernel


def cache_dir() -> Path:
    return Path(os.environ.get("FEDBRB_FAST_CACHE", Path.home() / ".cache" / "fedbrb_fast"))


@cache
def load(source: str) -> ctypes.CDLL:
    """The compiled library of csrc/`source` (compiled into the cache if it is not there yet)."""
    if os.environ.get(ENV_SWITCH, "").lower() == "torch":
        raise RuntimeError(f"{ENV_SWITCH}=torch")
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler {compiler!r} on PATH (set CXX)")
    csrc = files("fedbrb_fast.csrc")
    text = csrc.joinpath(source).read_bytes()
    headers = {name: csrc.joinpath(name).read_bytes() for name in re.findall(r'#include "([^"]+)"', text.decode())}
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False).stdout
    parts = [text, *(name.encode() + body for name, body in sorted(headers.items())), " ".join(CXXFLAGS).encode(),
             version.encode(), _cpu_identity().encode()]
    key = hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]
    path = cache_dir() / f"{Path(source).stem}-{key}.so"
    if not path.exists():
        _compile(compiler, source, text, headers, path)
    return ctypes.CDLL(str(path))


@cache
def unavailable(source: str) -> str | None:
    """Why csrc/`source` cannot run here (None when it can)."""
    try:
        load(source)
    except (OSError, RuntimeError) as exc:
        return str(exc)
    return None


def use_kernel(kernel: str, reason_unavailable: Callable[[], str | None], *tensors: Tensor) -> bool:
    """Whether a dispatcher runs its compiled kernel on `tensors`: they are all float32 on the CPU
    and the library is available (`reason_unavailable()` is None, asked only then: it compiles on
    first use). Where only the library is missing, warns once that the reference runs instead."""
    if not all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors):
        return False
    reason = reason_unavailable()
    if reason is not None:
        warn_fallback(kernel, reason)
        return False
    return True


@cache
def warn_fallback(kernel: str, reason: str) -> None:
    """Warns once per kernel and reason that its plain-torch reference runs instead."""
    warnings.warn(f"{kernel}: the compiled CPU kernel is unavailable ({reason}); using its plain-torch "
                  "reference, which is slower", RuntimeWarning, stacklevel=4)


def _cpu_identity() -> str:
    """-march=native code runs only where the CPU has the same features."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next((line for line in lines if line.startswith(("flags", "Features"))), platform.processor())
    except OSError:
        return platform.machine() + platform.processor()


def _compile(compiler: str, source: str, text: bytes, headers: dict[str, bytes], path: Path) -> None:
    """Compiles into a temporary folder beside `path`, then renames: a concurrent or interrupted
    build never leaves a partial library under the cached name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        for name, body in headers.items():
            (Path(tmp) / name).write_bytes(body)
        src, lib = Path(tmp) / source, Path(tmp) / path.name
        src.write_bytes(text)
        done = subprocess.run([compiler, *CXXFLAGS, str(src), "-o", str(lib)], capture_output=True, text=True,
                              check=False)
        if done.returncode != 0:
            raise RuntimeError(f"compiling {source} with {compiler} failed: {done.stderr.strip()[-2000:]}")
        os.replace(lib, path)
