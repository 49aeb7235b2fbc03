"""Grouped block-sliced GEMM: the Triton kernels (on `kernel_device`: CPU tensors under
TRITON_INTERPRET=1 where there is no GPU, see conftest.py) against the plain-torch reference,
outputs and gradients, and the reference against an independent definition of the wrap-around
windows (torch.roll)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import pytest
import torch

from fedbrb_fast.kernels.grouped_gemm import (
    GroupedProblems,
    TileConfig,
    grouped_linear,
    grouped_linear_reference,
    grouped_linear_triton,
)
from fedbrb_fast.kernels.grouped_gemm_launch import default_tiles
from fedbrb_fast.kernels.grouped_gemm_problems import COL_START, FIELDS, ROW, ROW_START, SOURCE, K, M, N


@dataclass(frozen=True)
class Case:
    """Problems plus the shapes of X [rows, cols] and the source W [S, R, C] they slice."""

    problems: GroupedProblems
    x_shape: tuple[int, int]
    w_shape: tuple[int, ...]
    tiles: TileConfig


CASES = {
    # Ragged rows (one empty), prime source sizes, windows wrapping on both axes, several tiles
    # per problem along every axis.
    "ragged_wrapping": Case(
        GroupedProblems.build([5, 0, 17, 3, 40], [20, 7, 37, 11, 33], [29, 13, 9, 1, 23],
                              row_start=[30, 0, 5, 36, 17], col_start=[10, 28, 0, 3, 20]),
        (65, 29), (5, 37, 29), TileConfig(16, 16, 16)),
    # Every size below one 64-wide tile and none a multiple of 16.
    "below_tile": Case(
        GroupedProblems.build([3, 7], [5, 13], [11, 2], row_start=[10, 2], col_start=[3, 12]),
        (10, 13), (2, 13, 13), TileConfig(64, 64, 64)),
    # All problems slice one global [R, C] tensor with overlapping windows: dW and db accumulate
    # atomically, from several K tiles per problem (only the first adds db).
    "shared_global_source": Case(
        GroupedProblems.build([4, 9, 6], [24, 10, 13], [31, 17, 5], source=0, row_start=[0, 20, 22],
                              col_start=[3, 25, 30]),
        (19, 31), (24, 31), TileConfig(16, 16, 16)),
    # Empty problems along each axis (M = 0, N = 0, K = 0: Y = bias), rows no problem covers.
    "empty_and_gaps": Case(
        GroupedProblems.build([3, 0, 5, 2, 4], [6, 9, 0, 7, 5], [5, 8, 4, 0, 6], row_offset=[1, 4, 6, 12, 14],
                              row_start=[4, 0, 1, 2, 6], col_start=[7, 0, 2, 1, 5]),
        (20, 9), (5, 9, 9), TileConfig(16, 16, 16)),
}

# fp32 compares tightly (ieee dots); half types against an fp32 reference on the same rounded
# inputs, within their rounding (bf16 stores truncate in the interpreter: up to one ulp, 2^-7).
TOLERANCES = {torch.float32: (1e-4, 1e-5), torch.float16: (2e-3, 2 ** -10), torch.bfloat16: (2e-2, 2 ** -7)}
DTYPES = list(TOLERANCES)


def make_inputs(case: Case, dtype: torch.dtype, bias: bool = True, seed: int = 0, device: torch.device | str = "cpu"):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(case.x_shape, generator=gen).to(device, dtype)
    w = torch.randn(case.w_shape, generator=gen).to(device, dtype)
    b = torch.randn(case.w_shape[:-1], generator=gen).to(device, dtype) if bias else None
    return x, w, b


def leaves(*tensors):
    return [t.detach().clone().requires_grad_(True) if t is not None else None for t in tensors]


def assert_close(actual, expected, dtype):
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=rtol)


# --- problem table -------------------------------------------------------------------------------

def test_build_packs_rows_and_defaults_one_source_per_problem():
    p = GroupedProblems.build([3, 0, 5], [4, 4, 2], 7, row_start=[1, 0, 2])
    assert FIELDS == 7 and p.table.dtype == torch.int32
    assert p.table[:, ROW].tolist() == [0, 3, 3]
    assert p.table[:, M].tolist() == [3, 0, 5]
    assert p.table[:, N].tolist() == [4, 4, 2]
    assert p.table[:, K].tolist() == [7, 7, 7]
    assert p.table[:, SOURCE].tolist() == [0, 1, 2]
    assert p.table[:, ROW_START].tolist() == [1, 0, 2]
    assert p.table[:, COL_START].tolist() == [0, 0, 0]
    assert p.max_out_features == 4 and not p.shares_sources


def test_shares_sources_ignores_problems_without_rows():
    assert not GroupedProblems.build([2, 0], 3, 3, source=0).shares_sources
    assert GroupedProblems.build([2, 1], 3, 3, source=0).shares_sources


@pytest.mark.parametrize("change, message", [
    (dict(rows=[3, 9]), "rows beyond x"),
    (dict(in_features=[4, 9]), "in_features beyond x"),
    (dict(source=[0, 2]), "source index out of range"),
    (dict(out_features=[5, 8]), "taller than the source"),
    (dict(row_start=[0, 7]), "row_start outside"),
    (dict(col_start=[6, 0]), "col_start outside"),
])
def test_check_rejects_problems_that_do_not_fit(change, message):
    spec: dict[str, list[int] | int] = dict(rows=[3, 4], out_features=[5, 7], in_features=[4, 6], source=[0, 1],
                                            row_start=0, col_start=0)
    spec.update(change)
    rows, out_f, in_f = spec.pop("rows"), spec.pop("out_features"), spec.pop("in_features")
    p = GroupedProblems.build(rows, out_f, in_f, **spec)
    x = torch.zeros(8, 8)
    with pytest.raises(ValueError, match=message):
        p.check(x, torch.Size([2, 7, 6]), torch.Size([2, 7]))


def test_check_rejects_wider_window_and_wrong_bias_shape():
    p = GroupedProblems.build([2], 3, 5)
    with pytest.raises(ValueError, match="wider than the source"):
        p.check(torch.zeros(2, 5), torch.Size([1, 3, 4]), None)
    with pytest.raises(ValueError, match="bias source must be"):
        p.check(torch.zeros(2, 5), torch.Size([1, 3, 5]), torch.Size([3]))


def test_table_rejects_overlapping_rows_and_negative_entries():
    with pytest.raises(ValueError, match="overlap"):
        GroupedProblems.build([3, 2], 1, 1, row_offset=[0, 2])
    GroupedProblems.build([3, 0, 2], 1, 1, row_offset=[0, 1, 3])  # an empty problem overlaps nothing
    with pytest.raises(ValueError, match="non-negative"):
        GroupedProblems.build([3], 1, 1, row_start=-1)


def test_tile_maps_cover_every_tile_exactly_once():
    p = GroupedProblems.build([5, 0, 17, 3], [20, 7, 0, 11], [29, 13, 9, 0])
    expected = {
        "forward": {(0, a, b) for a in range(1) for b in range(2)} | {(3, 0, 0)},  # M=0 and N=0 have no tiles
        "grad_input": {(0, 0, b) for b in range(2)} | {(2, a, 0) for a in range(2)},
        # one tile along K even when K = 0 (it owns db), none without rows
        "grad_weight": {(0, a, b) for a in range(2) for b in range(2)} | {(3, 0, 0)},
    }
    for kernel, tiles in expected.items():
        tile_map = p.tile_map(kernel, 16, 16, torch.device("cpu"))
        assert tile_map.dtype == torch.int32
        assert sorted(map(tuple, tile_map.tolist())) == sorted(tiles), kernel


def test_default_tiles_fit_the_largest_problem():
    assert default_tiles(GroupedProblems.build([5, 20], [7, 100], [3, 40])) == TileConfig(32, 64, 64)
    assert default_tiles(GroupedProblems.build([1], 1, 1)) == TileConfig(16, 16, 16)
    with pytest.raises(ValueError, match="power of two"):
        TileConfig(block_m=8)


# --- reference -----------------------------------------------------------------------------------

def test_reference_matches_rolled_source_definition():
    """Slice row r is source row (row_start + r) % R: rolling the source by -start puts the
    window at the top-left corner."""
    case = CASES["ragged_wrapping"]
    x, w, b = make_inputs(case, torch.float32)
    y = grouped_linear_reference(x, w, b, case.problems)
    expected = torch.zeros_like(y)
    for row, m, n, k, s, r0, c0 in case.problems.table.tolist():
        weight = w[s].roll((-r0, -c0), dims=(0, 1))[:n, :k]
        expected[row:row + m, :n] = x[row:row + m, :k] @ weight.T + b[s].roll(-r0)[:n]
    torch.testing.assert_close(y, expected)


# --- Triton kernels vs reference ----------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", CASES)
def test_forward_and_gradients_match_reference(name, dtype, kernel_device):
    case = CASES[name]
    x, w, b = leaves(*make_inputs(case, dtype, device=kernel_device))
    y = grouped_linear_triton(x, w, b, case.problems, tiles=case.tiles)
    assert y.dtype == dtype and y.shape == (case.x_shape[0], case.problems.max_out_features)

    xr, wr, br = leaves(x.float(), w.float(), b.float())
    y_ref = grouped_linear_reference(xr, wr, br, case.problems)
    assert_close(y, y_ref, dtype)

    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(kernel_device, dtype)
    grads = torch.autograd.grad(y, (x, w, b), dy)
    grads_ref = torch.autograd.grad(y_ref, (xr, wr, br), dy.float())
    for grad, grad_ref, input_ in zip(grads, grads_ref, (x, w, b), strict=True):
        assert grad.shape == input_.shape and grad.dtype == dtype
        assert_close(grad, grad_ref, dtype)


@pytest.mark.parametrize("name", ["ragged_wrapping", "shared_global_source"])
def test_without_bias(name, kernel_device):
    case = CASES[name]
    x, w, _ = leaves(*make_inputs(case, torch.float32, bias=False, device=kernel_device))
    xr, wr = leaves(x, w)
    y = grouped_linear_triton(x, w, None, case.problems, tiles=case.tiles)
    y_ref = grouped_linear_reference(xr, wr, None, case.problems)
    torch.testing.assert_close(y, y_ref)
    dy = torch.randn(y.shape, device=kernel_device)
    grads, grads_ref = torch.autograd.grad(y, (x, w), dy), torch.autograd.grad(y_ref, (xr, wr), dy)
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(grad, grad_ref)


def test_strided_inputs_and_broadcast_upstream_gradient(kernel_device):
    """x is a column-strided view and y.sum() hands back a zero-stride gradient."""
    case = CASES["ragged_wrapping"]
    x_wide, w, b = make_inputs(case, torch.float32, device=kernel_device)
    x_wide = torch.cat([x_wide, x_wide], 1)
    x, xr = (leaf[:, ::2] for leaf in leaves(x_wide, x_wide))
    (w, b), (wr, br) = leaves(w, b), leaves(w, b)
    assert not x.is_contiguous()
    grouped_linear_triton(x, w, b, case.problems, tiles=case.tiles).sum().backward()
    grouped_linear_reference(xr, wr, br, case.problems).sum().backward()
    for leaf, leaf_ref in ((w, wr), (b, br)):
        torch.testing.assert_close(leaf.grad, leaf_ref.grad)


def test_only_requested_gradients_are_computed(kernel_device):
    case = CASES["below_tile"]
    x, w, b = make_inputs(case, torch.float32, device=kernel_device)
    (x,) = leaves(x)
    y = grouped_linear_triton(x, w, b, case.problems, tiles=case.tiles)
    (dx,) = torch.autograd.grad(y, (x,), torch.ones_like(y))
    (xr,) = leaves(x)
    (dx_ref,) = torch.autograd.grad(grouped_linear_reference(xr, w, b, case.problems), (xr,), torch.ones_like(y))
    torch.testing.assert_close(dx, dx_ref)
    w, b = leaves(w, b)
    y = grouped_linear_triton(x.detach(), w, b, case.problems, tiles=case.tiles)
    (db,) = torch.autograd.grad(y, (b,), torch.ones_like(y))
    torch.testing.assert_close(db, torch.autograd.grad(grouped_linear_reference(x.detach(), w, b, case.problems),
                                                       (b,), torch.ones_like(y))[0])


def test_two_layer_chain_like_the_batched_engine(kernel_device):
    """Clients of widths 1/4, 1/8, 1/16 of a 64-wide layer (K = 16 blocks of 4), each with a
    full-size copy of the global weights read through its rolling window: layer 0 slices the
    out-axis of [64, 40], layer 1 both axes of [32, 64]; y0 is packed like x, so it feeds layer 1."""
    gen = torch.Generator().manual_seed(3)
    blocks = [4, 2, 1, 4, 1, 2, 1]  # s = width * K blocks per client
    starts0 = [(7 * u + 13) % 16 for u in range(len(blocks))]  # client 0 wraps: blocks 13, 14, 15, 0
    starts1 = [(5 * u + 14) % 16 for u in range(len(blocks))]
    rows = [10, 13, 11, 12, 10, 14, 11]
    n0 = [4 * s for s in blocks]
    n1 = [2 * s for s in blocks]
    layer0 = GroupedProblems.build(rows, n0, 40, row_start=[4 * b for b in starts0])
    layer1 = GroupedProblems.build(rows, n1, n0, row_start=[2 * b for b in starts1], col_start=[4 * b for b in starts0])
    x = torch.randn(sum(rows), 40, generator=gen).to(kernel_device)
    params = [torch.randn(len(rows), 64, 40, generator=gen), torch.randn(len(rows), 64, generator=gen),
              torch.randn(len(rows), 32, 64, generator=gen), torch.randn(len(rows), 32, generator=gen)]
    params = [p.to(kernel_device) for p in params]

    def run(linear, leaves_):
        w0, b0, w1, b1 = leaves_
        h = torch.relu(linear(x, w0, b0, layer0, tiles=TileConfig(16, 16, 32)))
        return linear(h, w1, b1, layer1, tiles=TileConfig(16, 16, 16))

    def reference(x_, w, b, problems, tiles):
        return grouped_linear_reference(x_, w, b, problems)

    kernel_leaves, reference_leaves = leaves(*params), leaves(*params)
    y, y_ref = run(grouped_linear_triton, kernel_leaves), run(reference, reference_leaves)
    torch.testing.assert_close(y, y_ref, atol=1e-4, rtol=1e-5)
    dy = torch.randn(y.shape, generator=gen).to(kernel_device)
    grads = torch.autograd.grad(y, kernel_leaves, dy)
    for grad, grad_ref in zip(grads, torch.autograd.grad(y_ref, reference_leaves, dy), strict=True):
        torch.testing.assert_close(grad, grad_ref, atol=1e-4, rtol=1e-5)
    window = torch.zeros(64, dtype=torch.bool, device=kernel_device)
    window[(4 * starts0[0] + torch.arange(n0[0])) % 64] = True
    assert (grads[0][0, ~window] == 0).all() and (grads[0][0, window] != 0).all()


def test_default_tiles_path_and_zero_outside_problems(kernel_device):
    case = CASES["empty_and_gaps"]
    x, w, b = make_inputs(case, torch.float32, device=kernel_device)
    y = grouped_linear_triton(x, w, b, case.problems)  # default tiles
    torch.testing.assert_close(y, grouped_linear_reference(x, w, b, case.problems))
    covered = torch.zeros(y.shape, dtype=torch.bool, device=kernel_device)
    for row, m, n, *_ in case.problems.table.tolist():
        covered[row:row + m, :n] = True
    assert (y[~covered] == 0).all() and (y[covered] != 0).all()


def test_no_problems_gives_an_empty_output_and_zero_gradients(kernel_device):
    problems = GroupedProblems.build([], [], [])
    x, w, b = leaves(*(torch.randn(shape, device=kernel_device) for shape in ((4, 3), (2, 5, 3), (2, 5))))
    y = grouped_linear_triton(x, w, b, problems)
    assert y.shape == (4, 0)
    grads = torch.autograd.grad(y, (x, w, b), torch.randn(4, 0, device=kernel_device))
    assert all(g.shape == t.shape and not g.any() for g, t in zip(grads, (x, w, b), strict=True))


def test_triton_rejects_unsupported_inputs(kernel_device):
    case = CASES["below_tile"]
    x, w, b = make_inputs(case, torch.float32, device=kernel_device)
    with pytest.raises(ValueError, match="support"):
        grouped_linear_triton(x.double(), w.double(), b.double(), case.problems)
    with pytest.raises(ValueError, match="share one dtype"):
        grouped_linear_triton(x, w.half(), b, case.problems)


# --- dispatch ------------------------------------------------------------------------------------

def test_auto_dispatch_runs_reference_on_cpu_quietly():
    case = CASES["below_tile"]
    x, w, b = make_inputs(case, torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = grouped_linear(x, w, b, case.problems)
    assert torch.equal(y, grouped_linear_reference(x, w, b, case.problems))


def test_triton_backend_on_cpu_warns_and_runs_reference():
    case = CASES["below_tile"]
    x, w, b = make_inputs(case, torch.float32)
    with pytest.warns(RuntimeWarning, match="triton requested on CPU"):
        y = grouped_linear(x, w, b, case.problems, backend="triton")
    assert torch.equal(y, grouped_linear_reference(x, w, b, case.problems))
    with pytest.raises(ValueError, match="unknown backend"):
        grouped_linear(x, w, b, case.problems, backend="cuda")
