"""The Triton aggregation kernels against their plain-torch references, on `kernel_device` (CPU
tensors under TRITON_INTERPRET=1 where there is no GPU, see conftest), and compiled for an sm_90
target: the interpreter accepts what the compiler may not."""

import pytest
import torch
from aggregation_rounds import NUM_BLOCKS, make_round, to_device
from sm90_compile import compile_for_sm90

from fedbrb_fast.aggregation import AggregationRule, aggregate
from fedbrb_fast.kernels import aggregation as ref
from fedbrb_fast.kernels.aggregation_compile import variants

triton = pytest.importorskip("triton")
from fedbrb_fast.kernels import aggregation_triton as tri  # noqa: E402

# (clients, rows, cols, inner, client rows, client cols): odd and prime sizes, below the tile, whole axes
SHAPES = [(3, 12, 10, 3, 5, 4), (2, 7, 13, 1, 7, 5), (4, 5, 3, 9, 2, 3), (1, 17, 1, 1, 11, 1), (5, 3, 31, 2, 3, 29)]


def case(shape, dtype, c_layout, with_mask, device, acc=torch.float32, seed=0):
    n, rows, cols, inner, k_rows, k_cols = shape
    g = torch.Generator().manual_seed(seed)
    width = cols * inner
    c_width = {"row": 1, "col": cols, "elem": width}["elem" if with_mask else c_layout]
    starts = torch.randint(0, rows, (n,), generator=g)
    rows_ix = torch.stack([(torch.arange(k_rows) + s) % rows for s in starts.tolist()])  # wrap-around windows
    cols_ix = torch.stack([torch.randperm(cols, generator=g)[:k_cols] for _ in range(n)])  # random sets
    weights = torch.rand(n, generator=g, dtype=acc) * 5
    data = torch.randn(n, k_rows, k_cols * inner, generator=g).to(dtype)
    if n > 1:
        weights[1] = 0
        data[1, 0, 0] = float("nan")  # a weight-0 client's values never land, finite or not
    tensors = dict(
        a=torch.randn(rows, width, generator=g, dtype=acc), c=torch.rand(rows, c_width, generator=g, dtype=acc),
        data=data, weights=weights, rows=rows_ix, cols=cols_ix,
        mask=torch.rand(n, k_rows, k_cols * inner, generator=g) if with_mask else None)
    return {k: v.to(device) if v is not None else None for k, v in tensors.items()} | {"inner": inner}


def run(fn, args):
    a, c = args["a"].clone(), args["c"].clone()
    fn(a, c, args["data"], args["weights"], args["rows"], args["cols"], args["inner"], args["mask"])
    return a, c


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("c_layout,with_mask", [("col", False), ("row", False), ("elem", True), ("elem", False)])
def test_scatter_add_matches_reference(shape, dtype, c_layout, with_mask, kernel_device):
    if c_layout == "row" and shape[5] != shape[2]:
        shape = (*shape[:5], shape[2])  # C per row only where every client holds every column
    args = case(shape, dtype, c_layout, with_mask, kernel_device)
    (a, c), (ea, ec) = run(tri.scatter_add, args), run(ref.scatter_add_reference, args)
    assert torch.isfinite(a).all()
    assert torch.allclose(a, ea, atol=1e-4) and torch.allclose(c, ec, atol=1e-4)


def test_scatter_add_float64_sums_and_row_reduced_c(kernel_device):
    shape = (3, 6, 5, 2, 6, 3)  # every client holds every row: C may hold one row
    args = case(shape, torch.float32, "col", False, kernel_device, acc=torch.float64)
    args["rows"] = torch.arange(6, device=kernel_device).expand(3, 6)
    args["c"] = args["c"][:1].clone()
    (a, c), (ea, ec) = run(tri.scatter_add, args), run(ref.scatter_add_reference, args)
    assert a.dtype == torch.float64 and torch.allclose(a, ea, atol=1e-12) and torch.allclose(c, ec, atol=1e-12)


@pytest.mark.parametrize("c_shape", [(12, 1), (12, 10), (12, 30), (1, 10)])
@pytest.mark.parametrize("p_dtype", [torch.float32, torch.float16])
def test_apply_matches_reference(c_shape, p_dtype, kernel_device):
    g = torch.Generator().manual_seed(1)
    p, a = torch.randn(12, 30, generator=g).to(p_dtype), torch.randn(12, 30, generator=g)
    c = torch.rand(c_shape, generator=g) - 0.3  # some elements uncovered
    tile_c = (c_shape[0] // 3 if c_shape[0] > 1 else 1, c_shape[1] // 2 if c_shape[1] > 1 else 1)
    s, w = torch.randn(4, 15, generator=g), torch.rand(tile_c, generator=g)
    p, a, c, s, w = (t.to(kernel_device) for t in (p, a, c, s, w))
    tol = 1e-3 if p_dtype == torch.float16 else 1e-5
    assert torch.allclose(tri.apply_broadcast(p, a, c, s, w, 0.3).float(),
                          ref.apply_broadcast_reference(p, a, c, s, w, 0.3).float(), atol=tol)
    assert torch.allclose(tri.apply_overlap(p, a, c).float(), ref.apply_overlap_reference(p, a, c).float(), atol=tol)


@pytest.mark.parametrize("arch", ["cnn", "segmented", pytest.param("preresnet18", marks=pytest.mark.slow),
                                  pytest.param("transformer", marks=pytest.mark.slow)])
def test_triton_backend_end_to_end(kernel_device, arch):
    layout, params, updates = make_round(arch, "fedbrb", label_mask=True, zero_weight=True,
                                         widths=(0.25, 0.5, 0.25, 1.0))
    rule = AggregationRule("broadcast", lam=0.3, num_blocks=NUM_BLOCKS)
    on_device, moved = to_device(params, updates, kernel_device)
    got = aggregate(on_device, layout, moved, rule, backend="triton")
    expected = aggregate(params, layout, updates, rule)
    assert got.backend == "triton" and got.included == expected.included
    for name in layout.names:
        assert torch.allclose(got.params[name].cpu(), expected.params[name], atol=1e-5), name


@pytest.mark.slow  # compiler subprocesses
def test_every_variant_compiles_for_sm90(tmp_path):
    compiled = compile_for_sm90("fedbrb_fast.kernels.aggregation_compile", tmp_path / "triton-cache")
    assert sorted(line.split()[1] for line in compiled) == sorted(name for name, _, _ in variants())
    adds = {line.split()[1]: int(line.split("atomic_adds=")[1]) for line in compiled}
    assert all(n > 0 for name, n in adds.items() if name.startswith("scatter_add"))  # relaxed atomics into A, C
