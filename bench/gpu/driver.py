"""The GPU check: every correctness and speed check of the GPU paths, each in its own process,
within a time budget; writes gpu_check.json and prints a table last. Run it through run.sh:

    bash bench/gpu/run.sh [--dry-run] [--out DIR] [--only a,b] [--budget-s S]

On the GPU machine the Triton kernels run compiled (TRITON_INTERPRET unset before triton loads);
`--dry-run` runs the same checks on the CPU at tiny sizes, the Triton kernels under the
interpreter, and says per check what it leaves out for lack of CUDA. Exit status 1 if a check
failed, 2 if the run could not start (no CUDA without --dry-run).

Isolation: the checks run one after another, each in a child forked from this process, which
imports torch and the project but never touches CUDA (so every child starts its own CUDA
context): a crash, a sticky CUDA error or a hang (killed at the check's time cap) fails that
check only.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
for _path in (HERE, HERE.parent):  # the check modules, and the benchmarks they reuse (bench/*.py)
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


@dataclass(frozen=True)
class CheckSpec:
    name: str
    family: str
    target: str  # "module:function" under bench/gpu
    cap_s: float  # wall-time cap on the GPU machine (killed beyond it)
    what: str


# In order of priority within the time budget: correctness first, then the timings, the training speed
# check (which scales itself to the time left) last.
CHECKS = (
    CheckSpec("environment", "environment", "check_env:environment", 60,
              "versions (torch, triton, CUDA, driver, GPU); Triton kernels compiled, not interpreted"),
    CheckSpec("baseline_before", "baseline", "check_env:baseline", 30,
              "matmul peak and device-to-device copy bandwidth before the timings"),
    CheckSpec("grouped_gemm", "grouped_gemm", "check_grouped_gemm:grouped_gemm", 120,
              "Triton grouped GEMM forward, dX, dW+db vs torch reference: ragged, wrapping, empty; fp32/fp16/bf16"),
    CheckSpec("aggregation_kernels", "aggregation", "check_aggregation:kernels", 150,
              "scatter_add / apply kernels (CUDA extension, Triton, CuPy NVRTC) vs references"),
    CheckSpec("aggregation_rule", "aggregation", "check_aggregation:rule", 60,
              "aggregate() on every GPU backend vs the reference rule, fresh rounds"),
    CheckSpec("cupy_arrays", "cupy", "check_cupy:cupy_arrays", 45,
              "aggregate_arrays on CuPy arrays: zero-copy through DLPack, result in CuPy"),
    CheckSpec("engine_cuda", "engine", "check_engine:engine_cuda", 150,
              "batched engine on train.device (torch and triton linears) vs CPU reference engine, 2 rounds"),
    CheckSpec("sanitizer", "sanitizer", "check_sanitizer:sanitizer", 120,
              "compute-sanitizer memcheck over one small launch of every kernel"),
    CheckSpec("nvtx_round", "profiling", "check_nvtx:nvtx_round", 60,
              "one round under an NVTX collector: the ranges it emits; top GPU kernels"),
    CheckSpec("speed_aggregation", "speed", "speed_aggregation:speed_aggregation", 60,
              "aggregation GB/s vs same-run device copy; CuPy NVRTC vs torch extension"),
    CheckSpec("speed_grouped_gemm", "speed", "speed_grouped_gemm:speed_grouped_gemm", 60,
              "grouped GEMM TFLOP/s vs padded cuBLAS bmm and a per-group loop"),
    CheckSpec("speed_preresnet", "speed", "speed_families:speed_preresnet", 60,
              "PreResNet-18 at 1/16, 50 / 200 clients: batched engine (stacked, vmapped) vs plain per-client loop"),
    CheckSpec("speed_transformer", "speed", "speed_families:speed_transformer", 60,
              "Transformer at 1/8 on Shakespeare, 50 / 200 clients: batched engine (stacked, vmapped) vs plain loop"),
    CheckSpec("speed_training", "speed", "speed_training:speed_training", 150,
              "per-client GPU loop vs batched engine at 100 / 1,000 / 10,000 clients per round"),
    CheckSpec("baseline_after", "baseline", "check_env:baseline", 30,
              "matmul peak and copy bandwidth after the timings (>15% drift: noisy run)"),
)
RESERVED_FOR_LAST_S = 25  # baseline_after always gets its turn
GRACE_S = 10.0  # a check scales itself to its cap; past the cap and this grace it is killed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # the kernels run interpreted on CPU tensors
    else:
        os.environ.pop("TRITON_INTERPRET", None)  # compiled: must be unset before triton loads anywhere
    preload()

    selected = [c for c in CHECKS if not args.only or c.name in args.only]
    unknown = sorted(set(args.only) - {c.name for c in CHECKS})
    if unknown:
        print(f"unknown checks {unknown}; known: {[c.name for c in CHECKS]}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    start = time.monotonic()
    deadline = start + args.budget_s
    mode = "dry run on the CPU (tiny sizes, Triton interpreted)" if args.dry_run else "GPU"
    print(f"GPU check: {mode}; {len(selected)} checks; budget {args.budget_s:.0f} s; seed {seed}", flush=True)
    build = None if args.dry_run else start_extension_build(work)

    results: dict[str, dict] = {}
    no_cuda = False
    for spec in selected:
        left = deadline - time.monotonic() - (RESERVED_FOR_LAST_S if spec.name != "baseline_after" else 0)
        if left < 5:
            results[spec.name] = skipped(spec, f"time budget of {args.budget_s:.0f} s used up")
            print(f"\n== {spec.name}: skipped (time budget used up)", flush=True)
            continue
        results[spec.name] = run_isolated(spec, args.dry_run, work, seed, min(spec.cap_s, left), results)
        if spec.name == "environment" and not args.dry_run and not results[spec.name]["metrics"].get("cuda"):
            no_cuda = True
            break
    report = build_report(args, seed, selected, results, time.monotonic() - start, finish_extension_build(build))
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    if no_cuda:
        print("no CUDA device here: run with --dry-run on a CPU machine", file=sys.stderr, flush=True)
        return 2
    return 1 if report["failed"] else 0


def preload() -> None:
    """Import once what most checks use, so each forked child starts with it (imports cost
    seconds per process). None of these touches CUDA or makes an NVTX call at import."""
    for module in ("torch", "numpy", "triton", "fedbrb_fast.config", "fedbrb_fast.data", "fedbrb_fast.engines",
                   "fedbrb_fast.aggregation", "fedbrb_fast.kernels.grouped_gemm",
                   "fedbrb_fast.kernels.aggregation_triton"):
        importlib.import_module(module)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, Triton interpreted")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu-check")
    parser.add_argument("--only", type=lambda s: [x for x in s.split(",") if x], default=[],
                        help="comma-separated check names (a rerun of the failed ones)")
    parser.add_argument("--budget-s", type=float, default=None, help="wall-time budget (default 420 GPU, 300 dry)")
    parser.add_argument("--work-dir", default=os.environ.get("FEDBRB_GPU_CHECK_WORK", "/tmp/fedbrb-gpu-check/work"))
    parser.add_argument("--seed", type=int, default=None, help="replay a run's random inputs")
    args = parser.parse_args(argv)
    if args.budget_s is None:
        args.budget_s = 300.0 if args.dry_run else 420.0  # with run.sh's install, 8 minutes on the GPU
    return args


def run_isolated(spec: CheckSpec, dry_run: bool, work: Path, seed: int, cap_s: float, earlier: dict) -> dict:
    print(f"\n== {spec.name}: {spec.what}", flush=True)
    result_path = work / f"result-{spec.name}.json"
    result_path.unlink(missing_ok=True)
    started = time.monotonic()
    sys.stdout.flush()
    sys.stderr.flush()
    child = multiprocessing.get_context("fork").Process(
        target=run_check, args=(spec, dry_run, work, seed, started + cap_s, dict(earlier), result_path))
    child.start()
    child.join(cap_s + GRACE_S)
    if child.is_alive():
        child.kill()
        child.join()
        result = skipped(spec, "")
        result.update(status="failed", error=f"killed after {cap_s + GRACE_S:.0f} s (its cap)")
    elif result_path.exists():
        result = json.loads(result_path.read_text())
    else:
        result = skipped(spec, "")
        result.update(status="failed", error=f"the check's process died (exit code {child.exitcode})")
    result["seconds"] = round(time.monotonic() - started, 2)
    print(f"-- {spec.name}: {result['status']} in {result['seconds']:.1f} s"
          + (f" ({result['error']})" if result.get("error") else ""), flush=True)
    return result


def run_check(spec: CheckSpec, dry_run: bool, work: Path, seed: int, deadline: float, earlier: dict,
              result_path: Path) -> None:
    """In the child: run one check and write its result."""
    import torch
    from harness import Context, Recorder, Skip

    torch.set_num_threads(max(1, min(16, os.cpu_count() or 1)) if not dry_run else 2)
    ctx = Context(dry_run=dry_run, device=torch.device("cpu" if dry_run else "cuda"), work_dir=work,
                  deadline=deadline, seed=seed, earlier=earlier)
    rec = Recorder(spec.name)
    status, error = "ok", None
    try:
        module, function = spec.target.split(":")
        getattr(importlib.import_module(module), function)(ctx, rec)
    except Skip as exc:
        status, error = "skipped", str(exc)
        print(f"  skipped: {exc}", flush=True)
    except BaseException as exc:  # the check failed; the run goes on
        traceback.print_exc()
        status, error = "failed", f"{type(exc).__name__}: {exc}"
    if rec.failures and status != "failed":
        status = "failed"
        error = error or f"{len(rec.failures)} failed: {rec.failures[0]}" + (" ..." if len(rec.failures) > 1 else "")
    result = {"name": spec.name, "family": spec.family, "what": spec.what, "status": status, "error": error,
              "summary": rec.summary, "cases": rec.cases, "metrics": rec.metrics, "skipped_parts": rec.skipped}
    result_path.write_text(json.dumps(result, default=str))
    sys.stdout.flush()


def skipped(spec: CheckSpec, reason: str) -> dict:
    return {"name": spec.name, "family": spec.family, "what": spec.what, "status": "skipped", "error": reason,
            "summary": "", "cases": [], "metrics": {}, "skipped_parts": []}


def start_extension_build(work: Path) -> tuple[subprocess.Popen, float, Path] | None:
    """Build the CUDA aggregation extension in the background (about a minute of nvcc): the
    aggregation checks that need it come later and wait on torch's build lock if it is not done."""
    log = work / "extension-build.log"
    code = "from fedbrb_fast.aggregation.backends.cuda_backend import extension; extension()"
    with log.open("w") as f:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=f, stderr=subprocess.STDOUT)
    print(f"building the CUDA aggregation extension in the background (log: {log})", flush=True)
    return proc, time.monotonic(), log


def finish_extension_build(build: tuple[subprocess.Popen, float, Path] | None) -> dict | None:
    if build is None:
        return None
    proc, started, log = build
    if proc.poll() is None:
        proc.kill()
        proc.wait()
        return {"status": "killed at the end of the run", "log_tail": log.read_text()[-2000:]}
    return {"returncode": proc.returncode, "log_tail": log.read_text()[-2000:] if proc.returncode else ""}


def build_report(args: argparse.Namespace, seed: int, selected: list[CheckSpec], results: dict[str, dict],
                 wall_s: float, extension_build: dict | None) -> dict:
    env = results.get("environment", {}).get("metrics", {})
    targets = [t for r in results.values() for t in r.get("metrics", {}).get("targets", [])]
    return {
        "meta": {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "mode": "dry-run" if args.dry_run else "gpu",
            "command": "bash bench/gpu/run.sh " + " ".join(sys.argv[1:]),
            "seed": seed, "budget_s": args.budget_s, "wall_s": round(wall_s, 1),
            "host": platform.node(), "source": source_revision(),
            "versions": env.get("versions", {}), "extension_build": extension_build,
        },
        "checks": results,
        "expected_checks": [c.name for c in selected],
        "targets": targets,
        "noisy": bool(results.get("baseline_after", {}).get("metrics", {}).get("noisy")),
        "failed": [name for name, r in results.items() if r["status"] == "failed"],
    }


def source_revision() -> str:
    """git's description of the checkout, else the one prepare.sh recorded (the GPU machine may
    get the tree without .git)."""
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                             text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    recorded = ROOT / ".whl" / "SOURCE_REVISION"
    return f"{recorded.read_text().strip()} (recorded by prepare.sh)" if recorded.exists() else "unknown"


def print_table(report: dict) -> None:
    meta = report["meta"]
    print(f"\n=== GPU check ({meta['mode']}) {meta['date']}  wall {meta['wall_s']:.0f} s  seed {meta['seed']}")
    print(f"{'check':20} {'status':8} {'sec':>6}  summary")
    for name, r in report["checks"].items():
        text = r["summary"] or (r["error"] or "")
        if r["status"] == "failed" and r["error"] and r["error"] not in text:
            text = f"{text}  [{r['error']}]" if text else r["error"]
        if r["skipped_parts"] and r["status"] != "skipped":
            text += f"  (skipped {len(r['skipped_parts'])} parts)"
        print(f"{name:20} {r['status']:8} {r.get('seconds', 0):6.1f}  {text[:150]}")
    for t in report["targets"]:
        print(f"target {t['name']}: {t['value']:.4g} {t['unit']} vs {t['target']} -> "
              f"{'met' if t['met'] else 'MISSED'}{' (' + t['note'] + ')' if t.get('note') else ''}")
    if report["noisy"]:
        print("NOISY RUN: matmul peak or copy bandwidth moved by more than 15% during the run; rerun before "
              "reporting any speed figure")
    print(f"failed: {', '.join(report['failed'])}" if report["failed"] else "no check failed")


if __name__ == "__main__":
    sys.exit(main())
