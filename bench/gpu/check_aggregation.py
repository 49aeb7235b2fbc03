"""Checks `aggregation_kernels` and `aggregation_rule`.

kernels: scatter_add, apply_overlap and apply_broadcast of every GPU implementation — the CUDA
extension built from csrc/ with nvcc, the compiled Triton kernels, the same CUDA source compiled
by NVRTC through CuPy — against the plain-torch references of kernels/aggregation.py computed in
float64, on fresh random inputs: odd and prime sizes, wrap-around row windows, random column
sets, whole axes (index stride 0), masks, C per element / column / row / column summed over rows,
a weight-0 client full of NaN (never lands), data in
fp32 or fp16 with float32 or float64 sums. Outputs that the kernels allocate come from NaN-filled
allocator memory.

rule: the public aggregate() on each GPU backend against the reference rule in float64 on fresh
FedBRB rounds of the benchmark cases (bench/aggregation_cases.py), one client's update NaN (it
must be excluded). The tolerance is 4x the float32 reference's own error (at least 2e-6).
"""

from __future__ import annotations

import importlib.util
from types import ModuleType
from typing import Any

import torch
from aggregation_cases import Case, make_case
from harness import Context, Recorder, poison_allocator, relative_error
from torch import Tensor

from fedbrb_fast.aggregation import AggregationRule, ClientBatch, aggregate, as_dense
from fedbrb_fast.kernels import aggregation as ref

# (clients, rows, cols, inner, client rows, client cols)
SCATTER_SHAPES = [(3, 12, 10, 3, 5, 4), (2, 7, 13, 1, 7, 5), (5, 3, 31, 2, 3, 29), (1, 17, 1, 1, 11, 1)]
SCATTER_SHAPES_GPU = [(64, 1024, 784, 1, 128, 98), (48, 256, 128, 9, 16, 8), (300, 37, 41, 3, 11, 7)]
# (rows, cols, inner, row tiles, col tiles) for apply_*: S and W tile A's shape.
APPLY_SHAPES = [(12, 10, 3, 4, 5), (7, 13, 1, 7, 13), (16, 8, 9, 2, 4)]
APPLY_SHAPES_GPU = [(1024, 784, 1, 8, 8), (256, 128, 9, 16, 16), (1000, 10, 1, 8, 1)]
DTYPES = [(torch.float32, torch.float32), (torch.float16, torch.float32), (torch.float32, torch.float64)]
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12}
HALF_OUTPUT_TOLERANCE = 1e-3  # one fp16 rounding of the result


def implementations(ctx: Context, rec: Recorder) -> dict[str, Any]:
    """The GPU implementations that load here (each with the reference's three functions)."""
    from fedbrb_fast.kernels import aggregation_triton

    impls: dict[str, Any] = {"triton": aggregation_triton}
    if not ctx.cuda:
        rec.skip("CUDA extension", "needs CUDA (nvcc build of csrc/)")
        rec.skip("CuPy NVRTC kernels", "CuPy cannot launch without a GPU")
        return impls
    try:
        from fedbrb_fast.aggregation.backends.cuda_backend import extension

        impls["cuda"] = extension()
    except Exception as exc:  # a failed nvcc build surfaces as many types
        rec.fail(f"the CUDA extension did not build: {type(exc).__name__}: {exc}")
    if importlib.util.find_spec("cupy") is None:
        rec.skip("CuPy NVRTC kernels", "cupy is not installed")
    else:
        try:
            from fedbrb_fast.aggregation.backends.cupy_kernels import nvrtc_kernels

            impls["cupy"] = nvrtc_kernels()
        except Exception as exc:
            rec.fail(f"NVRTC could not build the kernels through CuPy: {type(exc).__name__}: {exc}")
    return impls


def kernels(ctx: Context, rec: Recorder) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    impls = implementations(ctx, rec)
    g = ctx.generator(21)
    if ctx.cuda:
        rec.metric("allocator_poisoned", poison_allocator(ctx.device))
    scatter_shapes = SCATTER_SHAPES + (SCATTER_SHAPES_GPU if ctx.cuda else [])
    apply_shapes = APPLY_SHAPES + (APPLY_SHAPES_GPU if ctx.cuda else [])
    for data_dtype, acc in DTYPES:
        for shape in scatter_shapes:  # (clients, rows, cols, inner, client rows, client cols)
            for c_layout in ("col", "row", "elem", "mask", "col_all_rows"):
                args = scatter_inputs(shape, data_dtype, acc, c_layout, g)
                want_a, want_c = run_scatter(ref.scatter_add_reference, args, torch.float64, torch.device("cpu"))
                for name, impl in impls.items():
                    got_a, got_c = run_scatter(impl.scatter_add, args, acc, ctx.device)
                    label = f"{name} scatter_add {shape_label(shape)} {dtype_label(data_dtype, acc)} C per {c_layout}"
                    error = max(relative_error(got_a, want_a), relative_error(got_c, want_c))
                    rec.case(label, error, TOLERANCE[acc])
        for apply_shape in apply_shapes:  # (rows, cols, inner, row tiles, col tiles)
            for c_layout in ("col", "row", "elem"):
                args = apply_inputs(apply_shape, data_dtype, acc, c_layout, g)
                for broadcast in (False, True):
                    want = run_apply(ref, args, broadcast, torch.float64, torch.device("cpu"))
                    for name, impl in impls.items():
                        if ctx.cuda:
                            poison_allocator(ctx.device, megabytes=64)
                        got = run_apply(impl, args, broadcast, acc, ctx.device)
                        kind = "apply_broadcast" if broadcast else "apply_overlap"
                        tolerance = HALF_OUTPUT_TOLERANCE if data_dtype == torch.float16 else TOLERANCE[acc]
                        label = f"{name} {kind} {apply_shape[:3]} {dtype_label(data_dtype, acc)} C per {c_layout}"
                        rec.case(label, relative_error(got, want), tolerance)
    n_ok = sum(c["ok"] for c in rec.cases)
    rec.summary = f"{n_ok}/{len(rec.cases)} cases ok; implementations: {', '.join(impls)}"


def shape_label(shape: tuple[int, ...]) -> str:
    n, rows, cols, inner, k_rows, k_cols = shape
    return f"{n} clients {k_rows}x{k_cols}x{inner} of {rows}x{cols}x{inner}"


def dtype_label(data: torch.dtype, acc: torch.dtype) -> str:
    return f"{str(data)[6:]}->{str(acc)[6:]}"


def scatter_inputs(shape: tuple[int, ...], data_dtype: torch.dtype, acc: torch.dtype, c_layout: str,
                   g: torch.Generator) -> dict[str, Any]:
    n, rows, cols, inner, k_rows, k_cols = shape
    width = cols * inner
    if c_layout == "row":  # C per row needs every client to hold every column
        k_cols = cols
    c_shape = {"col": (rows, cols), "row": (rows, 1), "elem": (rows, width), "mask": (rows, width),
               "col_all_rows": (1, cols)}[c_layout]
    starts = torch.randint(0, rows, (n,), generator=g)
    rows_ix = torch.stack([(torch.arange(k_rows) + s) % rows for s in starts.tolist()])  # wrap-around windows
    if c_layout == "col_all_rows":  # every client holds every row: one C row, a stride-0 index set
        rows_ix = torch.arange(rows).expand(n, rows)
        k_rows = rows
    cols_ix = torch.stack([torch.randperm(cols, generator=g)[:k_cols] for _ in range(n)])  # random sets
    weights = torch.rand(n, generator=g, dtype=torch.float64) * 5
    data = torch.randn(n, k_rows, k_cols * inner, generator=g).to(data_dtype)
    if n > 1:
        weights[1] = 0
        data[1] = float("nan")  # a weight-0 client's values never land
    return dict(a=torch.randn(rows, width, generator=g, dtype=torch.float64),
                c=torch.rand(c_shape, generator=g, dtype=torch.float64), data=data, weights=weights,
                rows=rows_ix, cols=cols_ix, inner=inner,
                mask=torch.rand(n, k_rows, k_cols * inner, generator=g) if c_layout == "mask" else None)


def run_scatter(fn: Any, args: dict[str, Any], acc: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    a, c = args["a"].to(device, acc, copy=True), args["c"].to(device, acc, copy=True)  # updated in place
    data = args["data"].to(device) if acc != torch.float64 or device.type != "cpu" else args["data"].double()
    mask = args["mask"].to(device) if args["mask"] is not None else None
    rows = args["rows"]
    # A whole axis keeps its stride-0 client axis on the device (.to() would materialize it).
    rows = rows[:1].to(device).expand_as(rows) if rows.stride(0) == 0 else rows.to(device)
    fn(a, c, data, args["weights"].to(device, acc), rows, args["cols"].to(device), args["inner"], mask)
    return a, c


def apply_inputs(shape: tuple[int, ...], p_dtype: torch.dtype, acc: torch.dtype, c_layout: str,
                 g: torch.Generator) -> dict[str, Any]:
    rows, cols, inner, row_tiles, col_tiles = shape
    width = cols * inner
    tile_rows, tile_cols = rows // row_tiles, cols // col_tiles
    c_shape, w_shape = {"col": ((1, cols), (1, tile_cols)), "row": ((rows, 1), (tile_rows, 1)),
                        "elem": ((rows, width), (tile_rows, tile_cols * inner))}[c_layout]
    c = torch.rand(c_shape, generator=g, dtype=torch.float64)
    c[c < 0.2] = 0  # cells no client reached keep p (overlap) or take only the broadcast term
    w = torch.rand(w_shape, generator=g, dtype=torch.float64)
    w[w < 0.1] = 0
    return dict(p=torch.randn(rows, width, generator=g).to(p_dtype), a=torch.randn(rows, width, generator=g,
                                                                                     dtype=torch.float64),
                c=c, s=torch.randn(tile_rows, tile_cols * inner, generator=g, dtype=torch.float64), w=w,
                lam=float(torch.rand((), generator=g)))


def run_apply(impl: Any, args: dict[str, Any], broadcast: bool, acc: torch.dtype, device: torch.device) -> Tensor:
    p = args["p"].to(device) if acc != torch.float64 or device.type != "cpu" else args["p"].double()
    a, c, s, w = (args[k].to(device, acc) for k in ("a", "c", "s", "w"))
    if broadcast:
        return _fn(impl, "apply_broadcast")(p, a, c, s, w, args["lam"])
    return _fn(impl, "apply_overlap")(p, a, c)


def _fn(impl: ModuleType | Any, name: str) -> Any:
    """The reference module names its functions *_reference; the implementations do not."""
    return getattr(impl, f"{name}_reference", None) or getattr(impl, name)


def rule(ctx: Context, rec: Recorder) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    cases: list[tuple[str, float, list[int] | None, list[str]]]
    if ctx.cuda:
        backends = ["torch", "triton", "cuda", "auto"] + (["cupy"] if importlib.util.find_spec("cupy") else [])
        cases = [("mlp", 0.2, None, backends), ("cnn", 0.5, None, backends)]
        rec.metric("allocator_poisoned", poison_allocator(ctx.device))
    else:
        backends = ["torch", "numba", "triton"]
        cases = [("mlp", 0.004, [8, 8], ["torch", "numba"]), ("cnn", 0.015, [16, 16, 16, 16], backends)]
        rec.skip("backends cuda, cupy, auto-on-CUDA", "need CUDA; the CPU backends and interpreted Triton ran")
        rec.skip("triton on the MLP case", "the interpreter takes seconds per call: the CNN case only")
    for name, scale, hidden, case_backends in cases:
        case = make_case(name, scale, hidden, seed=ctx.seed % 10_000)
        bad = case.batch.clients[1]
        first = case.layout.names[0]
        as_dense(case.batch.params[first])[1].fill_(float("nan"))  # must be excluded, by every backend
        for kind in ("broadcast", "overlap"):
            rule_ = case.rule(kind)
            truth = aggregate(_cast(case.params, torch.float64), case.layout, [_batch_cast(case.batch, torch.float64)],
                              rule_)
            ref32 = aggregate(case.params, case.layout, [case.batch], rule_)
            ref_error = max(relative_error(ref32.params[k], truth.params[k]) for k in case.params)
            tolerance = max(4 * ref_error, 2e-6)
            for backend in case_backends:
                got = run_on(ctx, case, rule_, backend)
                error = max(relative_error(got.params[k], truth.params[k]) for k in case.params)
                label = f"{backend} ({got.backend}) {name} {kind} {len(case.batch)} clients"
                rec.case(label, error, tolerance, reference_fp32_error=ref_error)
                rec.require(sorted(got.excluded) == sorted(truth.excluded) == [bad],
                            f"{label}: the NaN client {bad} is excluded, and only it")
    n_ok = sum(c["ok"] for c in rec.cases)
    rec.summary = f"{n_ok}/{len(rec.cases)} cases ok; backends: {', '.join(backends)}"


def run_on(ctx: Context, case: Case, rule_: AggregationRule, backend: str) -> Any:
    params = {k: v.to(ctx.device) for k, v in case.params.items()}
    b = case.batch
    batch = ClientBatch(b.clients, b.weights, tuple(i.to(ctx.device) for i in b.indices),
                        {k: v.to(ctx.device) for k, v in b.params.items()},
                        {k: v.to(ctx.device) for k, v in b.masks.items()})
    if ctx.cuda:
        poison_allocator(ctx.device, megabytes=256)
    return aggregate(params, case.layout, [batch], rule_, backend=backend)


def _cast(params: dict[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
    return {k: v.to(dtype) for k, v in params.items()}


def _batch_cast(b: ClientBatch, dtype: torch.dtype) -> ClientBatch:
    params = {k: as_dense(v) for k, v in b.params.items()}
    return ClientBatch(b.clients, b.weights, b.indices, _cast(params, dtype), _cast(dict(b.masks), dtype))
