"""The Transformer over stacked clients (models/transformer.py computes one client; this computes n).

Weightless steps see the clients as more samples: attention runs as one fused kernel over [n * b]
sequences (kernels/causal_attention_cpu.causal_attention: the CPU lanes kernel at small head
dimensions, else `scaled_dot_product_attention`), so no client's [heads, L, L] score matrix is
ever written out (under vmap the functional forward's written-out attention materializes them all,
and its masking, scaling and softmax passes over them took 3x the whole stacked step). Every linear
layer is one batched GEMM over the client's b * L tokens (Q, K and V one GEMM together), with the
scaler folded into its weight and bias (no pass over the activations); LayerNorm normalizes each
token without its affine, which is folded into the next linear layer's weights per client.
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
        qkv = _normed_linear(h, params, p + "norm1", [p + "q", p + "k", p + "v"], factor)  # [n, b, L, 3 * D]
        q, k, v = (_heads(t, heads) for t in qkv.chunk(3, dim=-1))
        att = causal_attention(q, k, v).reshape(n, b, length, -1)  # [n*b, L, heads, d] -> [n, b, L, heads * d]
        h = h + _linear(att, params[p + "o.weight"], params[p + "o.bias"], factor)
        m = F.gelu(_normed_linear(h, params, p + "norm2", [p + "fc1"], factor))
        h = h + _linear(m, params[p + "fc2.weight"], params[p + "fc2.bias"], factor)
    return _normed_linear(h, params, "norm", ["out"], 1.0)


def _normed_linear(h: Tensor, params: Mapping[str, Tensor], norm: str, linears: list[str], factor: float) -> Tensor:
    """The linear layers `linears` (outputs concatenated) of LayerNorm `norm` of h. The norm's
    per-client affine is folded into their weights: W (g * z + c) + d = (W g) z + (W c + d), so
    the activations see one normalization and one GEMM, and the affine's passes over them (and
    their gradients) are over the weights instead."""
    weight = torch.cat([params[name + ".weight"] for name in linears], dim=1)  # [n, out, in]
    bias = torch.cat([params[name + ".bias"] for name in linears], dim=1)
    gain, shift = params[norm + ".weight"], params[norm + ".bias"]  # [n, in]
    folded_bias = torch.baddbmm(bias.unsqueeze(2), weight, shift.unsqueeze(2)).squeeze(2)
    normed = F.layer_norm(h, (h.shape[-1],), eps=LN_EPS)
    return _linear(normed, weight * gain.unsqueeze(1), folded_bias, factor)


def _linear(h: Tensor, weight: Tensor, bias: Tensor, factor: float) -> Tensor:
    """factor * (h W^T + b) for h [n, b, L, in], weight [n, out, in], bias [n, out] -> [n, b, L, out]:
    one batched GEMM, the factor applied to the weight and bias (far smaller than h: baddbmm's
    alpha would scale the gradient of every activation in the backward pass instead)."""
    n, b, length, _ = h.shape
    if factor != 1.0:
        weight, bias = weight * factor, bias * factor
    out = torch.baddbmm(bias.unsqueeze(1), h.reshape(n, b * length, -1), weight.transpose(1, 2))
    return out.view(n, b, length, -1)


def _heads(t: Tensor, heads: int) -> Tensor:
    """[n, b, L, heads * d] (a view) -> [n * b, L, heads, d], a view as long as t's rows are."""
    n, b, length, _ = t.shape
    return t.view(n * b, length, heads, -1)
