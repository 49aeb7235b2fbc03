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
residual layers' GEMMs accumulate (baddbmm's in-place form) into the residual stream plus their
bias, which the LayerNorm before them writes as it normalizes the stream
(kernels/layer_norm_cpu.layer_norm_and_shift; its backward also adds the two branches' gradients).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from ..kernels.bias_gelu_cpu import bias_gelu
from ..kernels.causal_attention_cpu import causal_attention
from ..kernels.layer_norm_cpu import layer_norm, layer_norm_and_shift

LN_EPS = 1e-5


def transformer_forward_stacked(params: Mapping[str, Tensor], x: Tensor, *, layers: int, heads: int,
                                factor: float) -> Tensor:
    """`factor`: the scaler's multiplier (1 / beta while training with the scaler, else 1)."""
    n, b, length = x.shape
    table = params["embed.weight"]  # [n, vocab, D]: client c's row t is row c * vocab + t of the flattened table
    rows = x + torch.arange(n, device=x.device).view(n, 1, 1) * table.shape[1]
    h = F.embedding(rows, table.reshape(-1, table.shape[2])) + params["pos.weight"][:, :length].unsqueeze(1)
    h = (h * factor if factor != 1.0 else h).view(n, b * length, -1)  # the residual stream, [n, tokens, D]
    for layer in range(layers):
        p = f"layer{layer}."
        normed, h = layer_norm_and_shift(h, _scaled(params[p + "o.bias"], factor), LN_EPS)
        qkv, qkv_bias = _folded_linear(normed, params, p + "norm1", [p + "q", p + "k", p + "v"], factor)
        att = causal_attention(qkv.view(n * b, length, -1), heads, qkv_bias).view(n, b * length, -1)
        h = h.baddbmm_(att, _scaled(params[p + "o.weight"], factor).transpose(1, 2))
        normed, h = layer_norm_and_shift(h, _scaled(params[p + "fc2.bias"], factor), LN_EPS)
        m = bias_gelu(*_folded_linear(normed, params, p + "norm2", [p + "fc1"], factor))
        h = h.baddbmm_(m, _scaled(params[p + "fc2.weight"], factor).transpose(1, 2))
    out, bias = _folded_linear(layer_norm(h, LN_EPS), params, "norm", ["out"], 1.0)
    return out.add_(bias.unsqueeze(1)).view(n, b, length, -1)  # the GEMM's backward does not read its output


def _folded_linear(normed: Tensor, params: Mapping[str, Tensor], norm: str, linears: list[str],
                   factor: float) -> tuple[Tensor, Tensor]:
    """The linear layers `linears` (outputs concatenated) of the affine of LayerNorm `norm` applied
    to `normed` [n, tokens, in], times factor: the GEMM's output [n, tokens, out] without the bias,
    and the bias [n, out], for the next step to add as it reads the output (no pass writes a bias
    broadcast). The affine and the factor are folded into the weights: f (W (g * z + c) + d) =
    (W (f g)) z + f (W c + d), so the activations see one GEMM, and the affine's passes over them
    (and their gradients) are over the weights."""
    weight = torch.cat([params[name + ".weight"] for name in linears], dim=1)  # [n, out, in]
    bias = torch.cat([params[name + ".bias"] for name in linears], dim=1)
    gain, shift = params[norm + ".weight"], params[norm + ".bias"]  # [n, in]
    folded_bias = torch.baddbmm(bias.unsqueeze(2), weight, shift.unsqueeze(2), beta=factor, alpha=factor).squeeze(2)
    gain = gain * factor if factor != 1.0 else gain
    return torch.bmm(normed, (weight * gain.unsqueeze(1)).transpose(1, 2)), folded_bias


def _scaled(t: Tensor, factor: float) -> Tensor:
    return t * factor if factor != 1.0 else t
