"""Checks `environment` (what runs where, and that the Triton kernels are compiled on a GPU) and
`baseline_before` / `baseline_after` (matmul peak and copy bandwidth: if they drift by more than
15% over the run, the machine was noisy and no speed figure of the run is reported)."""

from __future__ import annotations

import ctypes
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys

import torch
from harness import Context, Recorder, interleaved

NOISE_LIMIT = 0.15
TOOLS = {"nvcc": ["nvcc", "--version"], "compute-sanitizer": ["compute-sanitizer", "--version"],
         "ncu": ["ncu", "--version"], "gcc": ["gcc", "--version"], "ninja": ["ninja", "--version"],
         "nvidia-smi": ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]}


def environment(ctx: Context, rec: Recorder) -> None:
    versions: dict[str, object] = {"python": sys.version.split()[0], "platform": platform.platform(),
                                   "torch": torch.__version__, "torch_cuda": torch.version.cuda}
    for package in ("triton", "numpy", "numba", "numba-cuda", "cupy-cuda13x", "pydantic", "nvtx", "scikit-learn"):
        versions[package] = _package_version(package)
    tools = {name: _tool_version(cmd) for name, cmd in TOOLS.items()}
    versions["tools"] = tools
    cuda = torch.cuda.is_available()
    rec.metric("cuda", cuda)
    if cuda:
        props = torch.cuda.get_device_properties(0)
        versions.update(gpu=props.name, compute_capability=f"{props.major}.{props.minor}",
                        gpu_memory_gib=round(props.total_memory / 2**30, 1), sms=props.multi_processor_count,
                        driver=_driver_release(tools), driver_cuda_api=_driver_cuda_api(),
                        gpus=torch.cuda.device_count())
    rec.metric("versions", versions)
    for name, value in versions.items():
        if name != "tools":
            print(f"  {name}: {value}")
    for name, value in tools.items():
        print(f"  tool {name}: {value}")

    interpret = os.environ.get("TRITON_INTERPRET")
    from fedbrb_fast.kernels.grouped_gemm_kernels import INTERPRETED

    rec.metric("triton_interpret", interpret)
    rec.metric("triton_kernels_interpreted", INTERPRETED)
    if ctx.dry_run:
        rec.require(INTERPRETED, "dry run: the Triton kernels run under the interpreter (TRITON_INTERPRET=1)")
        rec.skip("GPU, driver and CUDA versions", "no CUDA in a dry run")
    else:
        rec.require(cuda, "a CUDA device is visible to torch")
        rec.require(not INTERPRETED and not interpret,
                    f"the Triton kernels are compiled for the GPU, not interpreted (TRITON_INTERPRET={interpret!r})")
    where = versions.get("gpu", "CPU (dry run)")
    rec.summary = (f"{where}; torch {torch.__version__}, triton {versions['triton']}, CUDA {torch.version.cuda}, "
                   f"driver {versions.get('driver', '-')}")


def baseline(ctx: Context, rec: Recorder) -> None:
    """matmul TFLOP/s on random data (bf16 8192^3 on a GPU) and copy GB/s (bytes read + written)."""
    g = torch.Generator(ctx.device).manual_seed(ctx.seed)
    if ctx.cuda:
        n, dtype, copy_elems = 8192, torch.bfloat16, 1 << 28  # 1 GiB of float32
    else:
        n, dtype, copy_elems = 512, torch.float32, 1 << 22
    a = torch.randn(n, n, generator=g, device=ctx.device).to(dtype)  # random: a matmul of zeros runs faster
    b = torch.randn(n, n, generator=g, device=ctx.device).to(dtype)
    src = torch.randn(copy_elems, generator=g, device=ctx.device)
    dst = torch.empty_like(src)
    times = interleaved({"matmul": lambda: a @ b, "copy": lambda: dst.copy_(src)}, ctx.sync, reps=7)
    matmul_tflops = 2 * n**3 / times["matmul"].best / 1e12
    copy_gbps = 2 * src.numel() * 4 / times["copy"].best / 1e9
    rec.metric("matmul_tflops", matmul_tflops)
    rec.metric("matmul", {"n": n, "dtype": str(dtype), **times["matmul"].as_dict()})
    rec.metric("copy_gb_per_s", copy_gbps)
    rec.metric("copy", {"bytes": src.numel() * 4, **times["copy"].as_dict()})
    rec.summary = f"matmul {matmul_tflops:.3g} TFLOP/s ({dtype}, {n}^3), copy {copy_gbps:.3g} GB/s"
    before = ctx.earlier.get("baseline_before", {}).get("metrics", {})
    if rec.name == "baseline_after" and before.get("matmul_tflops"):
        drift = {"matmul": matmul_tflops / before["matmul_tflops"] - 1, "copy": copy_gbps / before["copy_gb_per_s"] - 1}
        noisy = any(abs(d) > NOISE_LIMIT for d in drift.values())
        rec.metric("drift_vs_before", drift)
        rec.metric("noisy", noisy)
        rec.summary += f"; drift matmul {drift['matmul']:+.0%}, copy {drift['copy']:+.0%}"
        if noisy and ctx.dry_run:
            rec.skip("noise verdict", "a dry run's figures are never reported (shared CPU, tiny sizes)")
        elif noisy:
            rec.fail(f"noisy run: the baselines moved by more than {NOISE_LIMIT:.0%} ({drift}); rerun before "
                     "reporting any speed figure")


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _tool_version(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"error: {exc}"
    lines = [line.strip() for line in (out.stdout or out.stderr).splitlines() if line.strip()]
    return lines[-1] if cmd[0] in ("nvcc", "compute-sanitizer", "ncu") and lines else (lines[0] if lines else "")


def _driver_release(tools: dict[str, str | None]) -> str | None:
    """The driver release from nvidia-smi's "name, driver_version, memory" line."""
    line = tools.get("nvidia-smi") or ""
    parts = [p.strip() for p in line.split(",")]
    return parts[1] if len(parts) == 3 else None


def _driver_cuda_api() -> str | None:
    """The CUDA version the driver supports (cuDriverGetVersion through libcuda)."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
        version = ctypes.c_int()
        if libcuda.cuDriverGetVersion(ctypes.byref(version)) == 0:
            return f"{version.value // 1000}.{version.value % 1000 // 10}"
    except OSError:
        pass
    return None
