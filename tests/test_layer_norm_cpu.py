"""The compiled CPU LayerNorm (no affine) against its reference, torch's F.layer_norm."""

from __future__ import annotations

import pytest
import torch

from fedbrb_fast.kernels import cpu_library
from fedbrb_fast.kernels import layer_norm_cpu as ln

needs_kernel = pytest.mark.skipif(cpu_library.unavailable(ln.SOURCE) is not None,
                                  reason=f"kernel unavailable: {cpu_library.unavailable(ln.SOURCE)}")


def value_and_grad(fn: object, x: torch.Tensor, grad: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = x.clone().requires_grad_()
    out = fn(leaf, eps)  # type: ignore[operator]
    return out.detach(), torch.autograd.grad(out, leaf, grad)[0]


@needs_kernel
# rows of 1-4 whole vectors take the register path (with 1-3 rows left over a block of 4), others
# (5, 33, 80, 100) the scalar loops
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (7, 16), (2, 40, 32), (13, 48), (5, 3, 33), (4, 64), (2, 2, 2, 100),
                                   (9, 1), (6, 80)])
@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_kernel_matches_reference(shape: tuple[int, ...], eps: float) -> None:
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g) * 3 + 2  # an offset mean, as the residual stream has
    grad = torch.randn(shape, generator=g)
    for got, want in zip(value_and_grad(ln.layer_norm_rows, x, grad, eps),
                         value_and_grad(ln.layer_norm_reference, x, grad, eps), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-6)


@needs_kernel
def test_kernel_takes_strided_input_and_gradient() -> None:
    x = torch.randn(6, 40)[:, ::2]  # rows of 20 with stride 2
    grad = torch.randn(20, 6).t()
    for got, want in zip(value_and_grad(ln.layer_norm_rows, x, grad, 1e-5),
                         value_and_grad(ln.layer_norm_reference, x, grad, 1e-5), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-6)


@needs_kernel
def test_constant_rows_normalize_to_zero() -> None:
    x = torch.full((3, 32), 7.0)
    assert torch.equal(ln.layer_norm_rows(x, 1e-5), torch.zeros(3, 32))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_dispatch_uses_the_reference_off_float32(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ln, "layer_norm_rows", lambda *a: pytest.fail("the kernel is float32 only"))
    x = torch.randn(4, 24, dtype=dtype)
    assert torch.equal(ln.layer_norm(x, 1e-5), ln.layer_norm_reference(x, 1e-5))


@needs_kernel
def test_dispatch_uses_the_kernel_for_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = ln.layer_norm_rows

    def counting(x: torch.Tensor, eps: float) -> torch.Tensor:
        calls.append(1)
        return real(x, eps)

    monkeypatch.setattr(ln, "layer_norm_rows", counting)
    ln.layer_norm(torch.randn(4, 24), 1e-5)
    assert calls == [1]


def test_without_a_compiler_it_warns_and_uses_the_reference(fresh_cpu_kernels: object,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    x = torch.randn(3, 8)
    with pytest.warns(RuntimeWarning, match="layer norm.*no-such-compiler-xyz"):
        out = ln.layer_norm(x, 1e-5)
    assert torch.equal(out, ln.layer_norm_reference(x, 1e-5))


@pytest.mark.parametrize(("x", "match"), [
    (torch.zeros(3, 4, dtype=torch.float64), "float32"),
    (torch.zeros(3, 0), "non-empty last dimension"),
])
def test_kernel_rejects_bad_input(x: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ln.layer_norm_rows(x, 1e-5)


def shift_values_and_grads(fn: object, x: torch.Tensor, bias: torch.Tensor, grad_y: torch.Tensor,
                           grad_shifted: torch.Tensor) -> tuple[torch.Tensor, ...]:
    leaves = (x.clone().requires_grad_(), bias.clone().requires_grad_())
    y, shifted = fn(*leaves, 1e-5)  # type: ignore[operator]
    loss = (y * grad_y).sum() + (shifted * grad_shifted).sum()
    return (y.detach(), shifted.detach(), *torch.autograd.grad(loss, leaves))


@needs_kernel
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 70, 32), (2, 130, 17), (4, 64, 64), (1, 200, 16), (3, 67, 48)])
def test_norm_and_shift_kernel_matches_reference(shape: tuple[int, ...]) -> None:
    # token counts across the 64-row bias-gradient parts (67: blocks of 4 rows span two groups);
    # the input gradient adds both branches'
    g = torch.Generator().manual_seed(sum(shape))
    x, bias = torch.randn(shape, generator=g) * 2 + 1, torch.randn(shape[0], shape[2], generator=g)
    grads = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    got = shift_values_and_grads(ln.layer_norm_and_shift_rows, x, bias, *grads)
    want = shift_values_and_grads(ln.layer_norm_and_shift_reference, x, bias, *grads)
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-6 * (shape[1] if i == 3 else 1))


@needs_kernel
def test_shifted_output_can_be_accumulated_into_in_place() -> None:
    """The stacked forward's residual GEMM accumulates into the shifted stream (baddbmm_)."""
    x, bias, w = torch.randn(2, 5, 8), torch.randn(2, 8), torch.randn(2, 8, 8)

    def run(fn: object) -> tuple[torch.Tensor, ...]:
        leaves = (x.clone().requires_grad_(), bias.clone().requires_grad_(), w.clone().requires_grad_())
        y, shifted = fn(leaves[0], leaves[1], 1e-5)  # type: ignore[operator]
        out = shifted.baddbmm_(y, leaves[2])
        return (out.detach(), *torch.autograd.grad(out.square().sum(), leaves))

    for a, b in zip(run(ln.layer_norm_and_shift_rows), run(ln.layer_norm_and_shift_reference), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_norm_and_shift_dispatch_off_float32_and_bad_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ln, "layer_norm_and_shift_rows", lambda *a: pytest.fail("the kernel is float32 only"))
    x, bias = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    for a, b in zip(ln.layer_norm_and_shift(x, bias, 1e-5), ln.layer_norm_and_shift_reference(x, bias, 1e-5),
                    strict=True):
        assert torch.equal(a, b)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="bias \\[N, C\\]"):
        ln.layer_norm_and_shift_rows(torch.zeros(2, 3, 4), torch.zeros(3, 4), 1e-5)
