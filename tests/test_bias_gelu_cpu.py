"""The compiled CPU bias + GELU against its reference, F.gelu(x + bias) (exact GELU)."""

from __future__ import annotations

import pytest
import torch

from fedbrb_fast.kernels import bias_gelu_cpu as bg
from fedbrb_fast.kernels import cpu_library

needs_kernel = pytest.mark.skipif(cpu_library.unavailable(bg.SOURCE) is not None,
                                  reason=f"kernel unavailable: {cpu_library.unavailable(bg.SOURCE)}")


def values_and_grads(fn: object, x: torch.Tensor, bias: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
    leaves = (x.clone().requires_grad_(), bias.clone().requires_grad_())
    out = fn(*leaves)  # type: ignore[operator]
    return (out.detach(), *torch.autograd.grad(out, leaves, grad))


@needs_kernel
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 5, 7), (2, 64, 16), (4, 130, 40), (2, 65, 128), (1, 3, 33),
                                   (5, 200, 17)])
def test_kernel_matches_reference(shape: tuple[int, ...]) -> None:
    # widths below, at and past the 16-float vectors; token counts across the 64-row bias-gradient parts
    g = torch.Generator().manual_seed(sum(shape))
    x, bias = torch.randn(shape, generator=g) * 3, torch.randn(shape[0], shape[2], generator=g)
    grad = torch.randn(shape, generator=g)
    got, want = values_and_grads(bg.bias_gelu_fused, x, bias, grad), values_and_grads(bg.bias_gelu_reference, x, bias,
                                                                                      grad)
    # torch's own float32 GELU is up to 1.2e-6 from the float64 one (the kernel 4e-7: the test below)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(got[2], want[2], rtol=1e-5, atol=2e-6 * shape[1])  # a sum over the tokens


@needs_kernel
def test_kernel_is_within_5e7_of_the_float64_gelu_and_its_derivative() -> None:
    z = torch.linspace(-10, 10, 20001).view(1, 1, -1)
    got = values_and_grads(bg.bias_gelu_fused, z, torch.zeros(1, z.shape[2]), torch.ones_like(z))
    truth = values_and_grads(bg.bias_gelu_reference, z.double(), torch.zeros(1, z.shape[2], dtype=torch.float64),
                             torch.ones_like(z, dtype=torch.float64))
    for a, b in zip(got[:2], truth[:2], strict=True):
        assert (a.double() - b).abs().max() < 5e-7


@needs_kernel
def test_tails_and_large_inputs_stay_finite_and_close() -> None:
    z = torch.tensor([-1e4, -60.0, -12.0, -5.0, -1e-3, 0.0, 1e-3, 5.0, 12.0, 60.0, 1e4]).view(1, 1, -1)
    bias, grad = torch.zeros(1, z.shape[2]), torch.ones_like(z)
    got, want = values_and_grads(bg.bias_gelu_fused, z, bias, grad), values_and_grads(bg.bias_gelu_reference, z, bias,
                                                                                      grad)
    for a, b in zip(got, want, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@needs_kernel
def test_kernel_takes_a_strided_gradient_and_input() -> None:
    x, bias = torch.randn(3, 20, 48)[:, :, ::2], torch.randn(3, 24)
    grad = torch.randn(3, 24, 20).transpose(1, 2)
    got, want = values_and_grads(bg.bias_gelu_fused, x, bias, grad), values_and_grads(bg.bias_gelu_reference, x, bias,
                                                                                      grad)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_dispatch_uses_the_reference_off_float32(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bg, "bias_gelu_fused", lambda *a: pytest.fail("the kernel is float32 only"))
    x, bias = torch.randn(2, 3, 8, dtype=dtype), torch.randn(2, 8, dtype=dtype)
    assert torch.equal(bg.bias_gelu(x, bias), bg.bias_gelu_reference(x, bias))


def test_without_a_compiler_it_warns_and_uses_the_reference(fresh_cpu_kernels: object,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    x, bias = torch.randn(2, 3, 8), torch.randn(2, 8)
    with pytest.warns(RuntimeWarning, match="GELU.*no-such-compiler-xyz"):
        out = bg.bias_gelu(x, bias)
    assert torch.equal(out, bg.bias_gelu_reference(x, bias))


@pytest.mark.parametrize(("x", "bias", "match"), [
    (torch.zeros(2, 3), torch.zeros(2, 3), "\\[N, T, C\\]"),
    (torch.zeros(2, 3, 4), torch.zeros(2, 3), "\\[N, T, C\\]"),
    (torch.zeros(2, 3, 4, dtype=torch.float64), torch.zeros(2, 4, dtype=torch.float64), "float32"),
])
def test_kernel_rejects_bad_input(x: torch.Tensor, bias: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        bg.bias_gelu_fused(x, bias)
