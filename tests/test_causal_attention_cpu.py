"""The CPU lanes attention kernel against its reference (torch's scaled_dot_product_attention)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from fedbrb_fast.kernels import causal_attention_cpu as ca

# The fallback tests run everywhere; these need the compiled kernel (a C++ compiler).
needs_lanes = pytest.mark.skipif(ca.lanes_unavailable() is not None,
                                 reason=f"lanes kernel unavailable: {ca.lanes_unavailable()}")


@pytest.fixture
def fresh_library(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> Iterator[None]:
    """An empty kernel cache and no memoized library, restored afterwards."""
    monkeypatch.setenv("FEDBRB_FAST_CACHE", str(tmp_path))
    for fn in (ca._library, ca.lanes_unavailable, ca._warn_fallback):
        fn.cache_clear()
    yield
    monkeypatch.undo()
    for fn in (ca._library, ca.lanes_unavailable, ca._warn_fallback):
        fn.cache_clear()


@pytest.fixture
def lanes_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The head dimension of every call that reaches the lanes kernel (which still computes)."""
    calls: list[int] = []
    real = ca.causal_attention_lanes

    def counting(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        calls.append(q.shape[-1])
        return real(q, k, v)

    monkeypatch.setattr(ca, "causal_attention_lanes", counting)
    return calls


def qkv_views(s: int, length: int, heads: int, dim: int, seed: int, scale: float = 1.0) -> tuple[torch.Tensor, ...]:
    """q, k, v as the Transformer makes them: [S, L, H, D] views of projections (leaf tensors)."""
    g = torch.Generator().manual_seed(seed)
    leaves = [(torch.randn(s, length, heads * dim, generator=g) * scale).requires_grad_() for _ in range(3)]
    return tuple(leaves) + tuple(t.view(s, length, heads, dim) for t in leaves)


def grads_of(fn: object, views: tuple[torch.Tensor, ...], leaves: tuple[torch.Tensor, ...],
             grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
    out = fn(*views)  # type: ignore[operator]
    return (out.detach(), *torch.autograd.grad(out, leaves, grad))


@needs_lanes
@pytest.mark.parametrize("dim", ca.HEAD_DIMS)
@pytest.mark.parametrize(("s", "length", "heads"), [(1, 1, 1), (3, 17, 5), (2, 80, 8), (7, 33, 3), (4, 40, 4)])
def test_lanes_match_reference_forward_and_backward(s: int, length: int, heads: int, dim: int) -> None:
    # S * H from 1 (15 padding lanes) to 16 (none) and past one group of 16 lanes
    *leaves, q, k, v = qkv_views(s, length, heads, dim, seed=s * 100 + length + dim)
    g = torch.randn(s, length, heads, dim, generator=torch.Generator().manual_seed(1))
    got = grads_of(ca.causal_attention_lanes, (q, k, v), tuple(leaves), g)
    want = grads_of(ca.causal_attention_reference, (q, k, v), tuple(leaves), g)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5)


@needs_lanes
def test_lanes_stable_under_large_scores_and_strided_grad() -> None:
    # scores of a few hundred: the row maximum is subtracted before exp, and e^x below -80 is ~0
    *leaves, q, k, v = qkv_views(3, 24, 4, 4, seed=7, scale=30.0)
    g = torch.randn(3, 4, 24, 4).transpose(1, 2)  # a non-contiguous incoming gradient
    got = grads_of(ca.causal_attention_lanes, (q, k, v), tuple(leaves), g)
    want = grads_of(ca.causal_attention_reference, (q, k, v), tuple(leaves), g)
    for a, b in zip(got, want, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)


@needs_lanes
def test_lanes_results_do_not_depend_on_thread_count() -> None:
    *leaves, q, k, v = qkv_views(9, 20, 8, 4, seed=3)
    g = torch.randn(9, 20, 8, 4)
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = grads_of(ca.causal_attention_lanes, (q, k, v), tuple(leaves), g)
        torch.set_num_threads(2)
        two = grads_of(ca.causal_attention_lanes, (q, k, v), tuple(leaves), g)
    finally:
        torch.set_num_threads(saved)
    for a, b in zip(one, two, strict=True):
        assert torch.equal(a, b)


@needs_lanes
def test_dispatch_uses_lanes_only_where_they_apply(lanes_calls: list[int]) -> None:
    for dtype, dim in ((torch.float32, 4), (torch.float64, 4), (torch.float32, 16), (torch.bfloat16, 8)):
        q, k, v = (torch.randn(2, 6, 3, dim, dtype=dtype) for _ in range(3))
        torch.testing.assert_close(ca.causal_attention(q, k, v), ca.causal_attention_reference(q, k, v),
                                   rtol=1e-2 if dtype == torch.bfloat16 else 2e-5, atol=2e-5)
    assert lanes_calls == [4]


def test_env_switch_selects_the_reference(fresh_library: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ca.ENV_SWITCH, "sdpa")
    assert ca.lanes_unavailable() == f"{ca.ENV_SWITCH}=sdpa"
    q, k, v = (torch.randn(2, 5, 2, 4) for _ in range(3))
    with pytest.warns(RuntimeWarning, match="sdpa"):
        out = ca.causal_attention(q, k, v)
    torch.testing.assert_close(out, ca.causal_attention_reference(q, k, v))


def test_missing_compiler_falls_back_with_a_clear_reason(fresh_library: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    reason = ca.lanes_unavailable()
    assert reason is not None and "no-such-compiler-xyz" in reason
    q, k, v = (torch.randn(1, 4, 2, 2) for _ in range(3))
    with pytest.warns(RuntimeWarning, match="no-such-compiler-xyz"):
        out = ca.causal_attention(q, k, v)
    torch.testing.assert_close(out, ca.causal_attention_reference(q, k, v))


def test_failed_compile_names_the_source_and_leaves_no_library(fresh_library: None, tmp_path: object,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", "false")  # a "compiler" that runs and fails
    with pytest.raises(RuntimeError, match=ca.SOURCE):
        ca._library()
    assert not list(ca._cache_dir().glob("*.so"))


@needs_lanes
@pytest.mark.slow  # compiles the library (seconds)
def test_library_is_compiled_once_into_the_cache(fresh_library: None) -> None:
    ca._library()
    built = list(ca._cache_dir().glob("causal_attention_cpu-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    ca._library.cache_clear()
    ca._library()
    assert list(ca._cache_dir().glob("*.so")) == built and built[0].stat().st_mtime_ns == stamp


@pytest.mark.parametrize(("shapes", "dtype", "match"), [
    (((2, 3, 4, 4), (2, 3, 4, 4), (2, 3, 4)), torch.float32, "one \\[S, L, H, D\\] shape"),
    (((2, 3, 4, 4),) * 3, torch.float64, "float32"),
    (((2, 3, 4, 16),) * 3, torch.float32, "head dimensions"),
])
def test_lanes_reject_bad_input(shapes: tuple[tuple[int, ...], ...], dtype: torch.dtype, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ca.causal_attention_lanes(*(torch.zeros(s, dtype=dtype) for s in shapes))


@needs_lanes
def test_stacked_transformer_on_lanes_equals_each_clients_functional_forward(lanes_calls: list[int]) -> None:
    """The stacked forward at head dimension 4 (float32, so on the lanes kernel) against the
    per-client functional forward (written-out attention), outputs and parameter gradients."""
    from fedbrb_fast.models import Transformer

    model = Transformer(11, context=12, dim=16, heads=4, mlp=24, layers=2)
    g = torch.Generator().manual_seed(5)
    n = 3
    clients = [model.init(torch.Generator().manual_seed(i)) for i in range(n)]
    stacked = {k: torch.stack([c[k] for c in clients]).requires_grad_() for k in clients[0]}
    x = torch.randint(0, 11, (n, 2, 12), generator=g)
    logits = model.forward_stacked(stacked, x, torch.ones(n, 2, dtype=torch.bool))
    grads = torch.autograd.grad(logits.square().sum(), list(stacked.values()))
    assert lanes_calls, "the stacked forward did not reach the lanes kernel"
    for i, params in enumerate(clients):
        own = {k: v.clone().requires_grad_() for k, v in params.items()}
        want = model.forward(own, x[i])
        want_grads = torch.autograd.grad(want.square().sum(), list(own.values()))
        torch.testing.assert_close(logits[i], want, rtol=1e-4, atol=1e-4)
        for got, exp in zip(grads, want_grads, strict=True):
            torch.testing.assert_close(got[i], exp, rtol=1e-3, atol=1e-4)
