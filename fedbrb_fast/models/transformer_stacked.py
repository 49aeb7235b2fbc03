"""The Transformer over stacked clients (models/transformer.py computes one client; this computes n).

Weightless steps see the clients as more samples: attention runs as one fused kernel over [n * b]
sequences (kernels/causal_attention_cpu.causal_attention: the CPU lanes kernel at small head
dimensions, else `scaled_dot_product_attention`), so no client's [heads, L, L] score matrix is
ever written out (under vmap the functional forward's written-out attention materializes them all,
and its masking, scaling and softmax passes over them took 3x the whole stacked step). Every linear
layer is one batched GEMM over the client's b * L tokens, with the scaler folded into its weight
and bias (no pass over the activations); LayerNorm normalizes each token
without its affine, which is then applied per client.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from ..kernels.causal_attention_cpu import causal_attention

LN_EPS = 1e-5


def transformer_forward_stacked(params: Mapping[str, Tensor], x: Tensor, *, layers: int, heads: int,
                                factor: float) -> Tensor:
    """`factor`: the scaler's multiplier (1 / beta while training with the scaler, else 1)."""
    n, b, length = x.shape
    clients = torch.arange(n, device=x.device).view(n, 1, 1)
    h = params["embed.weight"][clients, x] + params["pos.weight"][:, :length].unsqueeze(1)  # [n, b, L, D]
    h = h * factor if factor != 1.0 else h
    for layer in range(layers):
        p = f"layer{layer}."

        def linear(t: Tensor, name: str, scaled: bool = True, p: str = p) -> Tensor:
            return _linear(t, params[p + name + ".weight"], params[p + name + ".bias"], factor if scaled else 1.0)

        a = _layer_norm(h, params[p + "norm1.weight"], params[p + "norm1.bias"])
        q, k, v = (_heads(linear(a, t), heads) for t in ("q", "k", "v"))
        att = causal_attention(q, k, v).reshape(n, b, length, -1)  # [n*b, L, heads, d] -> [n, b, L, heads * d]
        h = h + linear(att, "o")
        m = F.gelu(linear(_layer_norm(h, params[p + "norm2.weight"], params[p + "norm2.bias"]), "fc1"))
        h = h + linear(m, "fc2")
    h = _layer_norm(h, params["norm.weight"], params["norm.bias"])
    return _linear(h, params["out.weight"], params["out.bias"], 1.0)


def _linear(h: Tensor, weight: Tensor, bias: Tensor, factor: float) -> Tensor:
    """factor * (h W^T + b) for h [n, b, L, in], weight [n, out, in], bias [n, out] -> [n, b, L, out]:
    one batched GEMM, the factor applied to the weight and bias (far smaller than h: baddbmm's
    alpha would scale the gradient of every activation in the backward pass instead)."""
    n, b, length, _ = h.shape
    if factor != 1.0:
        weight, bias = weight * factor, bias * factor
    out = torch.baddbmm(bias.unsqueeze(1), h.reshape(n, b * length, -1), weight.transpose(1, 2))
    return out.view(n, b, length, -1)


def _layer_norm(h: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    normed = F.layer_norm(h, (h.shape[-1],), eps=LN_EPS)
    return torch.addcmul(bias.view(len(h), 1, 1, -1), normed, weight.view(len(h), 1, 1, -1))


def _heads(t: Tensor, heads: int) -> Tensor:
    """[n, b, L, heads * d] -> [n * b, L, heads, d]."""
    n, b, length, _ = t.shape
    return t.reshape(n * b, length, heads, -1)
