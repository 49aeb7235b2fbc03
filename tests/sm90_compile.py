"""Compile a kernel module's variants for sm_90 in subprocesses (shared by the compile tests).

The subprocesses run without TRITON_INTERPRET (the kernels in this process were decorated for the
interpreter) and with a fresh Triton cache so nothing is skipped; shards compile in parallel."""

from __future__ import annotations

import os
import subprocess
import sys


def compile_for_sm90(module: str, cache_dir, shards: int = 2) -> list[str]:
    """The `compiled ...` lines every shard printed; fails the test if any shard failed."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(cache_dir)
    runs = [subprocess.Popen([sys.executable, "-m", module, "--arch", "90", "--shard", f"{i}/{shards}"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(shards)]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0, output[-4000:]
    return [line for output in outputs for line in output.splitlines() if line.startswith("compiled ")]
