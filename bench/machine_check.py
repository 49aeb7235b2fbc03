"""The machine's same-run matmul peak and copy bandwidth, taken before and after a measurement: if
either moved by more than 15%, other load changed the machine during the run and its figures are
not results."""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

NOISE_TOLERANCE = 0.15


def host_cpu() -> dict[str, str]:
    """The CPU's model name and widest vector ISA: the compiled CPU kernels' vector width follows the
    ISA (csrc/simd_cpu.h), so a kernel or Transformer figure belongs to it."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return {"cpu": platform.processor() or platform.machine(), "vector_isa": "unknown"}
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.machine())
    flags = set(next((line.split(":", 1)[1].split() for line in lines if line.startswith(("flags", "Features"))), []))
    isa = next((isa for isa, flag in (("AVX-512", "avx512f"), ("AVX2", "avx2"), ("AVX", "avx"), ("NEON", "asimd"))
                if flag in flags), "SSE")
    return {"cpu": name, "vector_isa": isa}


@dataclass(frozen=True)
class MachineSpeed:
    matmul_gflops: float  # fp32 2048^3 matmul, best of the repeats
    copy_gb_per_s: float  # bytes read + written by a 64 MiB tensor copy, best of the repeats


def measure_speed(repeats: int = 5, matmul_n: int = 2048, copy_mib: int = 64) -> MachineSpeed:
    a, b = torch.randn(matmul_n, matmul_n), torch.randn(matmul_n, matmul_n)
    src = torch.randn(copy_mib * 2**18)
    dst = torch.empty_like(src)
    a @ b
    dst.copy_(src)
    best_mm = best_copy = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best_mm = min(best_mm, time.perf_counter() - start)
        start = time.perf_counter()
        dst.copy_(src)
        best_copy = min(best_copy, time.perf_counter() - start)
    return MachineSpeed(2 * matmul_n**3 / best_mm / 1e9, 2 * src.numel() * 4 / best_copy / 1e9)


@dataclass(frozen=True)
class NoiseCheck:
    before: MachineSpeed
    after: MachineSpeed

    @property
    def drift(self) -> float:
        """Largest relative change of the peak or the bandwidth between before and after."""
        return max(abs(self.after.matmul_gflops / self.before.matmul_gflops - 1),
                   abs(self.after.copy_gb_per_s / self.before.copy_gb_per_s - 1))

    @property
    def noisy(self) -> bool:
        return self.drift > NOISE_TOLERANCE

    def as_dict(self) -> dict[str, object]:
        return {"before": asdict(self.before), "after": asdict(self.after), "drift": self.drift, "noisy": self.noisy}
