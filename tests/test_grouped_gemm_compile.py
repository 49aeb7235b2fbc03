"""Every grouped-GEMM kernel variant compiles for sm_90 without a GPU.

The interpreter that runs the other tests is more lenient than the compiler, so each launch the
launchers build is compiled to PTX and cubin in subprocesses without TRITON_INTERPRET (the kernels
here were decorated for the interpreter), two shards in parallel, with a fresh Triton cache so
nothing is skipped."""

from __future__ import annotations

import pytest
from sm90_compile import compile_for_sm90

from fedbrb_fast.kernels.grouped_gemm_compile import variant_launches

pytestmark = pytest.mark.slow  # compiler subprocesses


def test_every_variant_compiles_for_sm90(tmp_path):
    compiled = compile_for_sm90("fedbrb_fast.kernels.grouped_gemm_compile", tmp_path / "triton-cache")
    assert len(compiled) == len(variant_launches())
    for kernel in ("forward", "grad_input", "grad_weight"):
        for dtype in ("fp32", "fp16", "bf16"):
            assert any(line.startswith(f"compiled {kernel}[{dtype}") for line in compiled), (kernel, dtype)
    assert any("has_bias+atomic" in line for line in compiled)
