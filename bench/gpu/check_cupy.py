"""Check `cupy_arrays`: aggregate_arrays on CuPy arrays — read through DLPack without a copy,
aggregated by every GPU backend (backend "cupy" being the csrc/ kernels compiled by NVRTC), the
result handed back as CuPy arrays — against the reference rule; and how long NVRTC takes to
compile the kernels from a cold cache. Without a GPU, CuPy creates no array: only the NVRTC
compilation for sm_90 runs (where libnvrtc is installed)."""

from __future__ import annotations

import importlib.util
import os
import time
from typing import Any

import torch
from aggregation_cases import make_case
from harness import Context, Recorder, Skip, poison_allocator, relative_error

from fedbrb_fast.aggregation import ClientBatch, Update, aggregate, aggregate_arrays
from fedbrb_fast.aggregation.array_types import as_tensor
from fedbrb_fast.models.layout import ModelLayout

TOLERANCE = 1e-5


def cupy_arrays(ctx: Context, rec: Recorder) -> None:
    if importlib.util.find_spec("cupy") is None:
        raise Skip("cupy is not installed (extra fedbrb-fast[cupy])")
    os.environ["CUPY_CACHE_DIR"] = str(ctx.work_dir / f"cupy-cache-{time.monotonic_ns()}")  # a cold compile
    if not ctx.cuda:
        nvrtc_without_gpu(rec)
        rec.skip("CuPy arrays through aggregate_arrays", "CuPy cannot create an array without a GPU")
        return
    import cupy

    from fedbrb_fast.aggregation.backends.cupy_kernels import nvrtc_kernels

    start = time.perf_counter()
    nvrtc_kernels()
    rec.metric("nvrtc_compile_s", time.perf_counter() - start)
    case = make_case("mlp", 0.05, None, seed=ctx.seed % 10_000)
    rule = case.rule("broadcast")
    expected = aggregate(case.params, case.layout, [case.batch], rule)
    global_arrays = {k: cupy.asarray(v.numpy()) for k, v in case.params.items()}
    updates = cupy_updates(case.batch, case.layout, cupy)
    sample = next(iter(global_arrays.values()))
    rec.require(as_tensor(sample).data_ptr() == sample.data.ptr, "CuPy inputs are read in place (same device pointer)")
    sliced = {s.name: [a for a, g in enumerate(s.axis_groups) if g is not None] for s in case.layout.params}
    for backend in ("cupy", "cuda", "triton", "torch"):
        poison_allocator(ctx.device, megabytes=256)
        got = aggregate_arrays(global_arrays, updates, rule, sliced=sliced, backend=backend)
        rec.require(all(isinstance(v, cupy.ndarray) and v.device.id == sample.device.id for v in got.params.values()),
                    f"{backend}: the new parameters are CuPy arrays on the inputs' device")
        error = max(relative_error(torch.from_dlpack(got.params[k]), expected.params[k]) for k in expected.params)
        rec.case(f"{backend} ({got.backend}): {len(updates)} CuPy updates, MLP 784-[1024,1024]-10 at 1/8", error,
                 TOLERANCE)
        rec.require(got.included == expected.included, f"{backend}: the same clients included")
    n_ok = sum(c["ok"] for c in rec.cases)
    rec.summary = (f"{n_ok}/{len(rec.cases)} cases ok; NVRTC compile {rec.metrics['nvrtc_compile_s']:.2f} s "
                   f"(cold cache)")


def nvrtc_without_gpu(rec: Recorder) -> None:
    from fedbrb_fast.aggregation.backends.cupy_kernels import compile_for_arch, instance_names

    start = time.perf_counter()
    try:
        _, lowered = compile_for_arch(90)
    except Exception as exc:  # CuPy's library loader has its own exception types
        if "libnvrtc" not in str(exc):
            raise
        rec.skip("NVRTC compilation for sm_90", f"libnvrtc is not installed: {exc}")
        return
    rec.metric("nvrtc_compile_s", time.perf_counter() - start)
    rec.require(set(lowered) == set(instance_names()), f"NVRTC compiles all {len(lowered)} kernel instances for sm_90")
    rec.summary = f"NVRTC compiled the kernels for sm_90 in {rec.metrics['nvrtc_compile_s']:.1f} s (no GPU)"


def cupy_updates(batch: ClientBatch, layout: ModelLayout, cupy: Any) -> list[Update]:
    """The batch's clients as framework-agnostic updates holding CuPy arrays (index sets too)."""
    def on_gpu(t: torch.Tensor) -> Any:
        return cupy.from_dlpack(t.cuda())

    out = []
    for u in batch.unbind():
        slices = {spec.name: {axis: on_gpu(u.indices[g]) for axis, g in enumerate(spec.axis_groups) if g is not None}
                  for spec in layout.params}
        out.append(Update(u.weight, {k: on_gpu(v) for k, v in u.params.items()}, slices,
                          {k: on_gpu(v) for k, v in u.masks.items()}, u.client))
    return out
