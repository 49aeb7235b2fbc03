"""The CPU lanes attention kernel against its reference (torch's scaled_dot_product_attention)."""

from __future__ import annotations

import pytest
import torch

from fedbrb_fast.kernels import causal_attention_cpu as ca

# The fallback tests run everywhere; these need the compiled kernel (a C++ compiler).
needs_lanes = pytest.mark.skipif(ca.lanes_unavailable() is not None,
                                 reason=f"lanes kernel unavailable: {ca.lanes_unavailable()}")


@pytest.fixture
def lanes_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The head dimension of every call that reaches the lanes kernel (which still computes)."""
    calls: list[int] = []
    real = ca.causal_attention_lanes

    def counting(qkv: torch.Tensor, heads: int, bias: torch.Tensor | None = None) -> torch.Tensor:
        calls.append(qkv.shape[-1] // (3 * heads))
        return real(qkv, heads, bias)

    monkeypatch.setattr(ca, "causal_attention_lanes", counting)
    return calls


def packed(s: int, length: int, heads: int, dim: int, seed: int, scale: float = 1.0, groups: int = 0,
           pad: int = 0) -> tuple[torch.Tensor, torch.Tensor | None, tuple[torch.Tensor, ...]]:
    """qkv [S, L, 3 * H * D] as one GEMM writes it (a view into rows `pad` floats wider than it when
    `pad`, so its strides are not its shape's), a bias of `groups` rows (none when 0), and the leaves."""
    g = torch.Generator().manual_seed(seed)
    width = 3 * heads * dim
    wide = (torch.randn(s, length, width + pad, generator=g) * scale).requires_grad_()
    bias = (torch.randn(groups, width, generator=g) * scale).requires_grad_() if groups else None
    leaves = (wide,) if bias is None else (wide, bias)
    return wide[..., :width], bias, leaves


def grads_of(fn: object, qkv: torch.Tensor, heads: int, bias: torch.Tensor | None, leaves: tuple[torch.Tensor, ...],
             grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
    out = fn(qkv, heads, bias)  # type: ignore[operator]
    return (out.detach(), *torch.autograd.grad(out, leaves, grad))


def assert_lanes_match(s: int, length: int, heads: int, dim: int, seed: int, grad: torch.Tensor, *, scale: float = 1.0,
                       groups: int = 0, pad: int = 0, rtol: float = 2e-5, atol: float = 2e-5) -> None:
    qkv, bias, leaves = packed(s, length, heads, dim, seed, scale, groups, pad)
    got = grads_of(ca.causal_attention_lanes, qkv, heads, bias, leaves, grad)
    want = grads_of(ca.causal_attention_reference, qkv, heads, bias, leaves, grad)
    for a, b in zip(got, want, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


@needs_lanes
@pytest.mark.parametrize("dim", ca.HEAD_DIMS)
@pytest.mark.parametrize(("s", "length", "heads"), [(1, 1, 1), (3, 17, 5), (2, 80, 8), (7, 33, 3), (4, 40, 4),
                                                    (5, 70, 8)])
def test_lanes_match_reference_forward_and_backward(s: int, length: int, heads: int, dim: int) -> None:
    # S * H from 1 (15 padding lanes) to 16 (none) and past one group of 16 lanes. Groups whose
    # lanes are whole runs of heads move rows by shuffles, the others by gathers (heads 8 at 5
    # sequences: two such groups and a half-padded one); the backward's query blocks (128 / dim
    # rows) split lengths 17 to 80 once or more.
    grad = torch.randn(s, length, heads * dim, generator=torch.Generator().manual_seed(1))
    assert_lanes_match(s, length, heads, dim, s * 100 + length + dim, grad)


@needs_lanes
@pytest.mark.parametrize(("s", "groups", "dim"), [(6, 3, 4), (5, 1, 2), (8, 8, 8), (12, 4, 4)])
def test_lanes_add_each_groups_bias_and_return_its_gradient(s: int, groups: int, dim: int) -> None:
    # sequence s adds bias row s // (S / G); the bias gradient sums its sequences' q, k, v gradients
    grad = torch.randn(s, 21, 3 * dim, generator=torch.Generator().manual_seed(2))
    assert_lanes_match(s, 21, 3, dim, 40 + s, grad, groups=groups, pad=5)


@needs_lanes
def test_lanes_stable_under_large_scores_and_strided_grad() -> None:
    # scores of a few hundred: the row maximum is subtracted before exp, and e^x below -80 is ~0
    grad = torch.randn(3, 16, 24).transpose(1, 2)  # a non-contiguous incoming gradient
    assert_lanes_match(3, 24, 4, 4, 7, grad, scale=30.0, pad=3, rtol=1e-4, atol=1e-3)


@needs_lanes
def test_lanes_results_do_not_depend_on_thread_count() -> None:
    qkv, bias, leaves = packed(9, 20, 8, 4, seed=3, groups=3)
    grad = torch.randn(9, 20, 32)
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = grads_of(ca.causal_attention_lanes, qkv, 8, bias, leaves, grad)
        torch.set_num_threads(2)
        two = grads_of(ca.causal_attention_lanes, qkv, 8, bias, leaves, grad)
    finally:
        torch.set_num_threads(saved)
    for a, b in zip(one, two, strict=True):
        assert torch.equal(a, b)


@needs_lanes
def test_dispatch_uses_lanes_only_where_they_apply(lanes_calls: list[int]) -> None:
    for dtype, dim in ((torch.float32, 4), (torch.float64, 4), (torch.float32, 16), (torch.bfloat16, 8)):
        qkv, bias = torch.randn(2, 6, 9 * dim, dtype=dtype), torch.randn(1, 9 * dim, dtype=dtype)
        torch.testing.assert_close(ca.causal_attention(qkv, 3, bias), ca.causal_attention_reference(qkv, 3, bias),
                                   rtol=1e-2 if dtype == torch.bfloat16 else 2e-5, atol=2e-5)
    assert lanes_calls == [4]


def test_env_switch_selects_the_reference(fresh_cpu_kernels: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ca.ENV_SWITCH, "sdpa")
    assert ca.lanes_unavailable() == f"{ca.ENV_SWITCH}=sdpa"
    qkv = torch.randn(2, 5, 24)
    with pytest.warns(RuntimeWarning, match="sdpa"):
        out = ca.causal_attention(qkv, 2)
    torch.testing.assert_close(out, ca.causal_attention_reference(qkv, 2))


def test_missing_compiler_falls_back_with_a_clear_reason(fresh_cpu_kernels: object,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    reason = ca.lanes_unavailable()
    assert reason is not None and "no-such-compiler-xyz" in reason
    qkv = torch.randn(1, 4, 12)
    with pytest.warns(RuntimeWarning, match="no-such-compiler-xyz"):
        out = ca.causal_attention(qkv, 2)
    torch.testing.assert_close(out, ca.causal_attention_reference(qkv, 2))


@pytest.mark.parametrize(("qkv_shape", "bias_shape", "heads", "dtype", "match"), [
    ((2, 3, 24), None, 5, torch.float32, "3 \\* heads \\* D"),
    ((2, 3, 4, 6), None, 1, torch.float32, "3 \\* heads \\* D"),
    ((4, 3, 24), (3, 24), 2, torch.float32, "G dividing"),
    ((4, 3, 24), (2, 12), 2, torch.float32, "bias must be"),
    ((2, 3, 24), None, 2, torch.float64, "float32"),
    ((2, 3, 96), None, 2, torch.float32, "head dimensions"),
])
def test_lanes_reject_bad_input(qkv_shape: tuple[int, ...], bias_shape: tuple[int, ...] | None, heads: int,
                                dtype: torch.dtype, match: str) -> None:
    bias = None if bias_shape is None else torch.zeros(bias_shape, dtype=dtype)
    with pytest.raises(ValueError, match=match):
        ca.causal_attention_lanes(torch.zeros(qkv_shape, dtype=dtype), heads, bias)
