"""The stacked Transformer on the compiled CPU kernels (float32) against each client's functional
forward (written-out attention, torch's LayerNorm and GELU): outputs and parameter gradients."""

from __future__ import annotations

import pytest
import torch

from fedbrb_fast.kernels import bias_gelu_cpu, causal_attention_cpu, cpu_library, layer_norm_cpu
from fedbrb_fast.models import Transformer

SOURCES = (causal_attention_cpu.SOURCE, layer_norm_cpu.SOURCE, bias_gelu_cpu.SOURCE)
pytestmark = pytest.mark.skipif(any(cpu_library.unavailable(s) for s in SOURCES), reason="no compiled CPU kernels")


@pytest.fixture
def kernel_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The compiled kernels the stacked forward reaches (each still computes)."""
    calls: list[str] = []
    for module, name in ((causal_attention_cpu, "causal_attention_lanes"), (layer_norm_cpu, "layer_norm_rows"),
                         (bias_gelu_cpu, "bias_gelu_fused")):
        real = getattr(module, name)

        def counting(*args: object, _real: object = real, _name: str = name) -> torch.Tensor:
            calls.append(_name)
            return _real(*args)  # type: ignore[operator]

        monkeypatch.setattr(module, name, counting)
    return calls


@pytest.mark.parametrize("beta", [1.0, 0.25])  # training at width ratio beta: the scaler multiplies by 1 / beta
def test_stacked_transformer_on_the_kernels_equals_each_clients_functional_forward(kernel_calls: list[str],
                                                                                  beta: float) -> None:
    model = Transformer(11, context=12, dim=16, heads=4, mlp=24, layers=2)
    g = torch.Generator().manual_seed(5)
    n = 3
    clients = [model.init(torch.Generator().manual_seed(i)) for i in range(n)]
    for c in clients:  # a non-trivial LayerNorm affine, which the stacked forward folds into the next layer
        for name, value in c.items():
            if "norm" in name:
                value.add_(0.3 * torch.randn(value.shape, generator=g))
    stacked = {k: torch.stack([c[k] for c in clients]).requires_grad_() for k in clients[0]}
    x = torch.randint(0, 11, (n, 2, 12), generator=g)
    logits = model.forward_stacked(stacked, x, torch.ones(n, 2, dtype=torch.bool), beta=beta, train=True)
    grads = torch.autograd.grad(logits.square().sum(), list(stacked.values()))
    assert set(kernel_calls) == {"causal_attention_lanes", "layer_norm_rows", "bias_gelu_fused"}
    for i, params in enumerate(clients):
        own = {k: v.clone().requires_grad_() for k, v in params.items()}
        want = model.forward(own, x[i], beta=beta, train=True)
        want_grads = torch.autograd.grad(want.square().sum(), list(own.values()))
        torch.testing.assert_close(logits[i], want, rtol=1e-4, atol=1e-4)
        for got, exp in zip(grads, want_grads, strict=True):
            torch.testing.assert_close(got[i], exp, rtol=1e-3, atol=1e-4)
