"""Every grouped-GEMM kernel variant compiles for sm_90 without a GPU.

The interpreter that runs the other tests is more lenient than the compiler, so each launch the
launchers build is compiled to PTX and cubin in subprocesses without TRITON_INTERPRET (the kernels
here were decorated for the interpreter), two shards in parallel, with a fresh Triton cache so
nothing is skipped."""

from __future__ import annotations

import os
import subprocess
import sys

from fedbrb_fast.kernels.grouped_gemm_compile import variant_launches

SHARDS = 2


def test_every_variant_compiles_for_sm90(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    runs = [subprocess.Popen([sys.executable, "-m", "fedbrb_fast.kernels.grouped_gemm_compile", "--arch", "90",
                              "--shard", f"{i}/{SHARDS}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True) for i in range(SHARDS)]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    for run, output in zip(runs, outputs):
        assert run.returncode == 0, output[-4000:]
    compiled = [line for output in outputs for line in output.splitlines() if line.startswith("compiled ")]
    assert len(compiled) == len(variant_launches())
    for kernel in ("forward", "grad_input", "grad_weight"):
        for dtype in ("fp32", "fp16", "bf16"):
            assert any(line.startswith(f"compiled {kernel}[{dtype}") for line in compiled), (kernel, dtype)
    assert any("has_bias+atomic" in line for line in compiled)
