"""Compiling and caching the C++ CPU kernels (kernels/cpu_library.py)."""

from __future__ import annotations

import ctypes
import platform
import shutil
import subprocess
from importlib.resources import files
from pathlib import Path

import pytest
import torch

from fedbrb_fast.kernels import causal_attention_cpu, cpu_library

SOURCES = ("causal_attention_cpu.cpp", "layer_norm_cpu.cpp", "bias_gelu_cpu.cpp")
needs_compiler = pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler")


def test_failed_compile_names_the_source_and_leaves_no_library(fresh_cpu_kernels: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", "false")  # a "compiler" that runs and fails
    with pytest.raises(RuntimeError, match="layer_norm_cpu.cpp"):
        cpu_library.load("layer_norm_cpu.cpp")
    assert not list(fresh_cpu_kernels.rglob("*.so"))
    assert "layer_norm_cpu.cpp" in str(cpu_library.unavailable("layer_norm_cpu.cpp"))


def test_missing_compiler_and_the_switch_make_every_kernel_unavailable(fresh_cpu_kernels: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    assert all("no-such-compiler-xyz" in str(cpu_library.unavailable(s)) for s in SOURCES)
    cpu_library.unavailable.cache_clear()
    cpu_library.load.cache_clear()
    monkeypatch.delenv("CXX")
    monkeypatch.setenv(cpu_library.ENV_SWITCH, "torch")
    assert all(cpu_library.unavailable(s) == f"{cpu_library.ENV_SWITCH}=torch" for s in SOURCES)
    causal_attention_cpu.lanes_unavailable.cache_clear()
    assert causal_attention_cpu.lanes_unavailable() == f"{cpu_library.ENV_SWITCH}=torch"


@needs_compiler
@pytest.mark.slow  # compiles the libraries (seconds)
def test_each_library_is_compiled_once_into_the_cache(fresh_cpu_kernels: Path) -> None:
    for source in SOURCES:
        cpu_library.load(source)
    built = sorted(fresh_cpu_kernels.glob("*.so"))
    assert [p.name.split("-")[0] for p in built] == sorted(Path(s).stem for s in SOURCES)
    stamps = [p.stat().st_mtime_ns for p in built]
    cpu_library.load.cache_clear()
    for source in SOURCES:
        cpu_library.load(source)
    assert sorted(fresh_cpu_kernels.glob("*.so")) == built and [p.stat().st_mtime_ns for p in built] == stamps


def test_the_cache_key_covers_the_included_header(fresh_cpu_kernels: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A changed csrc/simd_cpu.h must not load a library built from the old one."""
    seen: list[str] = []
    monkeypatch.setattr(cpu_library, "_compile", lambda compiler, source, text, headers, path: seen.append(path.name))
    monkeypatch.setattr(cpu_library.ctypes, "CDLL", lambda path: path)
    cpu_library.load("bias_gelu_cpu.cpp")
    real_files = cpu_library.files

    class Edited:
        def __init__(self, root: object) -> None:
            self.root = root

        def joinpath(self, name: str) -> object:
            entry = self.root.joinpath(name)  # type: ignore[attr-defined]
            if name != "simd_cpu.h":
                return entry
            return type("Header", (), {"read_bytes": lambda _self: entry.read_bytes() + b"// edited\n"})()

    monkeypatch.setattr(cpu_library, "files", lambda package: Edited(real_files(package)))
    cpu_library.load.cache_clear()
    cpu_library.load("bias_gelu_cpu.cpp")
    assert len(seen) == 2 and seen[0] != seen[1]


# The vector width follows the ISA compiled for (csrc/simd_cpu.h): with these flags on an x86 host,
# AVX2 (8 lanes, where the host has AVX) and SSE (4 lanes).
NARROWER_ISAS = {"avx2": ("-mno-avx512f",), "sse": ("-mno-avx512f", "-mno-avx")}


@needs_compiler
@pytest.mark.slow  # compiles the three libraries again (seconds)
@pytest.mark.parametrize("isa", list(NARROWER_ISAS))
def test_the_narrower_vector_widths_match_the_references(fresh_cpu_kernels: Path, monkeypatch: pytest.MonkeyPatch,
                                                         isa: str) -> None:
    """Built for narrower vectors than AVX-512's (no vector gather, reciprocal estimate or square
    root; other shuffle networks and register rows), as on CPUs that lack it."""
    from fedbrb_fast.kernels import bias_gelu_cpu, layer_norm_cpu

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the flags name x86 ISAs")
    monkeypatch.setattr(cpu_library, "CXXFLAGS", (*cpu_library.CXXFLAGS, *NARROWER_ISAS[isa]))
    g = torch.Generator().manual_seed(0)
    # head dimensions 2, 4 and 8 with head counts that do and do not fill whole vectors
    for heads, dim in ((3, 4), (4, 4), (8, 2), (2, 8), (8, 8)):
        qkv, bias = torch.randn(6, 20, 3 * heads * dim, generator=g), torch.randn(3, 3 * heads * dim, generator=g)
        torch.testing.assert_close(causal_attention_cpu.causal_attention_lanes(qkv, heads, bias),
                                   causal_attention_cpu.causal_attention_reference(qkv, heads, bias),
                                   rtol=2e-5, atol=2e-5)
    for x in (torch.randn(7, 33, generator=g), torch.randn(9, 32, generator=g), torch.randn(5, 64, generator=g),
              torch.randn(6, 16, generator=g)):  # scalar loops, register rows of 2-16 vectors
        torch.testing.assert_close(layer_norm_cpu.layer_norm_rows(x, 1e-5),
                                   layer_norm_cpu.layer_norm_reference(x, 1e-5), rtol=1e-5, atol=2e-6)
    x, shift = torch.randn(2, 7, 48, generator=g), torch.randn(2, 48, generator=g)
    for got, want in zip(layer_norm_cpu.layer_norm_and_shift_rows(x, shift, 1e-5),
                         layer_norm_cpu.layer_norm_and_shift_reference(x, shift, 1e-5), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-6)
    z, b = torch.randn(2, 5, 37, generator=g) * 3, torch.randn(2, 37, generator=g)
    torch.testing.assert_close(bias_gelu_cpu.bias_gelu_fused(z, b), bias_gelu_cpu.bias_gelu_reference(z, b),
                               rtol=1e-5, atol=2e-6)
    assert len(list(fresh_cpu_kernels.glob("*.so"))) == 3  # built here, with the flags
    lanes = ctypes.CDLL(str(next(fresh_cpu_kernels.glob("causal_attention_cpu-*.so")))).fedbrb_attention_lanes()
    host_flags = cpu_library._cpu_identity().split()
    assert lanes == {"avx2": 8, "sse": 4}[isa] or (isa == "avx2" and lanes == 4 and "avx" not in host_flags)


@needs_compiler
@pytest.mark.slow  # compiles the three sources (seconds)
def test_every_source_compiles_for_avx512() -> None:
    """The 16-lane AVX-512 variant compiles on any x86 host (it runs only on one that has it)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("an x86 ISA")
    for source in SOURCES:
        done = subprocess.run(["g++", *cpu_library.CXXFLAGS, "-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl",
                               "-fsyntax-only", str(files("fedbrb_fast.csrc").joinpath(source))],
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
