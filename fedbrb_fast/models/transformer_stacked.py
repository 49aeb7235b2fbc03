"""The Transformer over stacked clients (models/transformer.py computes one client; this computes n).

Weightless steps see the clients as more samples: attention runs as one fused kernel over [n * b]
sequences (kernels/causal_attention_cpu.causal_attention: the CPU lanes kernel at small head
dimensions, else `scaled_dot_product_attention`), so no client's [heads, L, L] score matrix is
ever written out (under vmap the functional forward's written-out attention materializes them all,
and its masking, scaling and softmax passes over them took 3x the whole stacked step). Every linear
layer is one batched GEMM over the client's b * L tokens (Q, K and V one GEMM together), with the
scaler folded into its weight and bias (no pass over the activations); LayerNorm normalizes each
token without its affine, which is folded into the next linear layer's weights per client.
No pass over the activations adds a bias on its own: the attention kernel adds Q, K and V's as it
reads them, the MLP's first layer's is added inside its GELU (kernels/bias_gelu_cpu), and the
residual layers' GEMMs accumulate into the residual stream plus their bias. LayerNorm is
kernels/layer_norm_cpu (float32 CPU; torch's elsewhere).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from ..kernels.bias_gelu_cpu import bias_gelu
from ..kernels.causal_attention_cpu import causal_attention
from ..kernels.layer_norm_cpu import layer_norm

LN_EPS = 1e-5


def transformer_forward_stacked(params: Mapping[str, Tensor], x: Tensor, *, layers: int, heads: int,
                                factor: float) -> Tensor:
    """`factor`: the scaler's multiplier (1 / beta while training with the scaler, else 1)."""
    n, b, length = x.shape
    table = params["embed.weight"]  # [n, vocab, D]: client c's row t is row c * vocab + t of the flattened table
    rows = x + torch.arange(n, device=x.device).view(n, 1, 1) * table.shape[1]
    h = F.embedding(rows, table.reshape(-1, table.shape[2])) + params["pos.weight"][:, :length].unsqueeze(1)
    h = h * factor if factor != 1.0 else h
    for layer in range(layers):
        p = f"layer{layer}."
        qkv, qkv_bias = _normed_linear_unbiased(h, params, p + "norm1", [p + "q", p + "k", p + "v"], factor)
        att = causal_attention(qkv.view(n * b, length, -1), heads, qkv_bias).view(n, b, length, -1)
        h = _residual_linear(h, att, params[p + "o.weight"], params[p + "o.bias"], factor)
        m = bias_gelu(*_normed_linear_unbiased(h, params, p + "norm2", [p + "fc1"], factor))
        h = _residual_linear(h, m, params[p + "fc2.weight"], params[p + "fc2.bias"], factor)
    return _normed_linear(h, params, "norm", ["out"], 1.0)


def _normed_linear(h: Tensor, params: Mapping[str, Tensor], norm: str, linears: list[str], factor: float) -> Tensor:
    """The linear layers `linears` (outputs concatenated) of LayerNorm `norm` of h: [n, b, L, out]."""
    out, bias = _normed_linear_unbiased(h, params, norm, linears, factor)
    return out.add_(bias.unsqueeze(1)).view(*h.shape[:3], -1)  # the GEMM's backward does not read its output


def _normed_linear_unbiased(h: Tensor, params: Mapping[str, Tensor], norm: str, linears: list[str],
                            factor: float) -> tuple[Tensor, Tensor]:
    """The linear layers `linears` (outputs concatenated) of LayerNorm `norm` of h, as the GEMM's
    output [n, b * L, out] without the bias and the bias [n, out], for the next step to add as it
    reads the output (no pass writes a bias broadcast). The norm's per-client affine is folded into
    the weights: W (g * z + c) + d = (W g) z + (W c + d), so the activations see one normalization
    and one GEMM, and the affine's passes over them (and their gradients) are over the weights."""
    n, b, length, dim = h.shape
    weight = torch.cat([params[name + ".weight"] for name in linears], dim=1)  # [n, out, in]
    bias = torch.cat([params[name + ".bias"] for name in linears], dim=1)
    gain, shift = params[norm + ".weight"], params[norm + ".bias"]  # [n, in]
    folded_bias = torch.baddbmm(bias.unsqueeze(2), weight, shift.unsqueeze(2)).squeeze(2)
    weight, folded_bias = _scaled(weight * gain.unsqueeze(1), folded_bias, factor)
    normed = layer_norm(h, LN_EPS).view(n, b * length, dim)
    return torch.bmm(normed, weight.transpose(1, 2)), folded_bias


def _residual_linear(h: Tensor, x: Tensor, weight: Tensor, bias: Tensor, factor: float) -> Tensor:
    """h + factor * (x W^T + b): the GEMM accumulates into h + factor * b (baddbmm's in-place form),
    so neither the bias broadcast nor the residual sum is a separate pass over the activations."""
    n, b, length, dim = h.shape
    weight, bias = _scaled(weight, bias, factor)
    out = h.reshape(n, b * length, dim) + bias.unsqueeze(1)
    out.baddbmm_(x.reshape(n, b * length, -1), weight.transpose(1, 2))
    return out.view(n, b, length, dim)


def _scaled(weight: Tensor, bias: Tensor, factor: float) -> tuple[Tensor, Tensor]:
    return (weight * factor, bias * factor) if factor != 1.0 else (weight, bias)
