"""Check `sanitizer`: `compute-sanitizer --tool memcheck` over sanitizer_launches.py, one small
launch of every kernel (out-of-bounds and misaligned accesses, bad frees, launch errors). torch's
caching allocator is switched off in that process, so an access past a tensor's end falls outside
any allocation instead of inside a cached block. Without CUDA the launch script runs on its own
(Triton interpreted), so it cannot rot."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from harness import Context, Recorder, Skip

SCRIPT = Path(__file__).resolve().parent / "sanitizer_launches.py"


def sanitizer(ctx: Context, rec: Recorder) -> None:
    if not ctx.cuda:
        output = run([sys.executable, str(SCRIPT), "--cpu"], dict(os.environ), ctx, rec)
        rec.skip("compute-sanitizer memcheck", "needs CUDA: the launch script ran without it, Triton interpreted")
        rec.summary = f"launch script ran on the CPU ({count_launches(output)} launches); memcheck needs CUDA"
        return
    tool = shutil.which("compute-sanitizer")
    if tool is None:
        raise Skip("compute-sanitizer is not installed")
    env = dict(os.environ, PYTORCH_NO_CUDA_MEMORY_CACHING="1")
    cmd = [tool, "--tool", "memcheck", "--error-exitcode", "1", "--print-limit", "20", "--leak-check", "no",
           sys.executable, str(SCRIPT)]
    output = run(cmd, env, ctx, rec)
    summary = re.search(r"ERROR SUMMARY: (\d+) error", output)
    errors = int(summary.group(1)) if summary else None
    rec.metric("memcheck_errors", errors)
    rec.require(errors == 0, f"memcheck: {errors if errors is not None else 'no'} errors reported "
                             f"over {count_launches(output)} launches")
    rec.summary = f"memcheck: {errors} errors over {count_launches(output)} launches"


def run(cmd: list[str], env: dict[str, str], ctx: Context, rec: Recorder) -> str:
    timeout = max(20.0, ctx.remaining() - 5)
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        text = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        rec.metric("output_tail", text[-4000:])
        raise RuntimeError(f"{Path(cmd[0]).name} did not finish within {timeout:.0f} s") from exc
    output = out.stdout + out.stderr
    rec.metric("output_tail", output[-4000:])
    rec.metric("launches", [line[len("launched "):] for line in output.splitlines() if line.startswith("launched ")])
    print("\n".join("  " + line for line in output.splitlines()[-25:]))
    rec.require(out.returncode == 0, f"{Path(cmd[0]).name} exited with {out.returncode}")
    return output


def count_launches(output: str) -> int:
    return sum(line.startswith("launched ") for line in output.splitlines())
