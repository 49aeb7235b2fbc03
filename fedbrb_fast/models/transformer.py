"""A pre-norm causal Transformer language model (docs/algorithm.md#model-families).

Groups (SPEC 7): 0 is the model dimension across the embeddings, every layer and the final norm;
per layer l, group 1 + 2l is its attention (heads x head_dim channels, one segment per head: a
sub-model keeps every head, each narrower) and 2 + 2l its MLP hidden units. The vocabulary (the
embedding rows and the logits) is never sliced.

HeteroFL's scaler (divide by the width ratio while training) sits where HeteroFL's and FedRolex's
Transformers put it: on the token and position embeddings, on the outputs of the Q, K, V and output
projections, on the MLP's hidden pre-activation and on its output.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import TransformerConfig
from .functional import scale_activation
from .init import init_params
from .layout import ModelLayout, ParamSpec
from .stacked import LinearLayer, StackedLinear
from .transformer_stacked import LN_EPS, transformer_forward_stacked


def transformer_layout(vocab: int, context: int, dim: int, heads: int, mlp: int, layers: int) -> ModelLayout:
    specs = [ParamSpec("embed.weight", (vocab, dim), (None, 0), "embedding"),
             ParamSpec("pos.weight", (context, dim), (None, 0), "embedding")]
    segments = [1]
    for layer in range(layers):
        att, hid = 1 + 2 * layer, 2 + 2 * layer
        p = f"layer{layer}."
        specs += [ParamSpec(p + "norm1.weight", (dim,), (0,), "norm_scale"),
                  ParamSpec(p + "norm1.bias", (dim,), (0,), "norm_shift")]
        for proj in ("q", "k", "v"):
            specs += [ParamSpec(p + f"{proj}.weight", (dim, dim), (att, 0), "weight", dim),
                      ParamSpec(p + f"{proj}.bias", (dim,), (att,), "bias", dim)]
        specs += [ParamSpec(p + "o.weight", (dim, dim), (0, att), "weight", dim),
                  ParamSpec(p + "o.bias", (dim,), (0,), "bias", dim),
                  ParamSpec(p + "norm2.weight", (dim,), (0,), "norm_scale"),
                  ParamSpec(p + "norm2.bias", (dim,), (0,), "norm_shift"),
                  ParamSpec(p + "fc1.weight", (mlp, dim), (hid, 0), "weight", dim),
                  ParamSpec(p + "fc1.bias", (mlp,), (hid,), "bias", dim),
                  ParamSpec(p + "fc2.weight", (dim, mlp), (0, hid), "weight", mlp),
                  ParamSpec(p + "fc2.bias", (dim,), (0,), "bias", mlp)]
        segments += [heads, 1]
    specs += [ParamSpec("norm.weight", (dim,), (0,), "norm_scale"),
              ParamSpec("norm.bias", (dim,), (0,), "norm_shift"),
              ParamSpec("out.weight", (vocab, dim), (None, 0), "weight", dim),
              ParamSpec("out.bias", (vocab,), (None,), "bias", dim)]
    sizes = (dim, *(n for _ in range(layers) for n in (dim, mlp)))
    return ModelLayout(sizes, tuple(specs), classifier=("out.weight", "out.bias"), group_segments=tuple(segments))


class Transformer:
    """Token ids x [b, L] (L <= context) -> next-token logits [b, L, vocab], causal."""

    arch = "transformer"
    batch_coupled = False  # LayerNorm normalizes each token alone
    # forward_stacked trains every tensor through autograd: no linear layer's update is fused
    stacked_linears: Mapping[str, LinearLayer] = {}
    input_layer: str | None = None

    def __init__(self, vocab: int, *, context: int, dim: int, heads: int, mlp: int, layers: int,
                 scaler: bool = True) -> None:
        self.vocab, self.context, self.heads, self.layers, self.scaler = vocab, context, heads, layers, scaler
        self.layout = transformer_layout(vocab, context, dim, heads, mlp, layers)

    @classmethod
    def from_config(cls, cfg: TransformerConfig, input_shape: tuple[int, ...], num_classes: int) -> Transformer:
        if len(input_shape) != 1:
            raise ValueError("model.arch: 'transformer' reads token sequences [length], "
                             f"got inputs of shape {input_shape}")
        if input_shape[0] > cfg.context:
            raise ValueError(f"model.context: sequences of {input_shape[0]} tokens are longer than the model's "
                             f"context of {cfg.context}")
        return cls(num_classes, context=cfg.context, dim=cfg.dim, heads=cfg.heads, mlp=cfg.mlp, layers=cfg.layers,
                   scaler=cfg.scaler)

    def init(self, generator: torch.Generator) -> dict[str, Tensor]:
        return init_params(self.layout, generator)

    def forward(self, params: Mapping[str, Tensor], x: Tensor, *, beta: float = 1.0, train: bool = False,
                mask: Tensor | None = None) -> Tensor:
        """`mask` is accepted for the protocol and unused: no statistic spans samples."""
        def scale(h: Tensor) -> Tensor:
            return scale_activation(h, beta=beta, train=train, scaler=self.scaler)

        length = x.shape[-1]
        h = scale(F.embedding(x, params["embed.weight"]) + params["pos.weight"][:length])
        for layer in range(self.layers):
            p = f"layer{layer}."
            a = _layer_norm(h, params[p + "norm1.weight"], params[p + "norm1.bias"])
            q, k, v = (self._heads(scale(F.linear(a, params[p + f"{n}.weight"], params[p + f"{n}.bias"])))
                       for n in ("q", "k", "v"))
            att = _causal_attention(q, k, v).transpose(-3, -2).flatten(-2)  # [b, L, heads * head_dim]
            h = h + scale(F.linear(att, params[p + "o.weight"], params[p + "o.bias"]))
            a = _layer_norm(h, params[p + "norm2.weight"], params[p + "norm2.bias"])
            m = F.gelu(scale(F.linear(a, params[p + "fc1.weight"], params[p + "fc1.bias"])))
            h = h + scale(F.linear(m, params[p + "fc2.weight"], params[p + "fc2.bias"]))
        h = _layer_norm(h, params["norm.weight"], params["norm.bias"])
        return F.linear(h, params["out.weight"], params["out.bias"])

    def forward_stacked(self, params: Mapping[str, Tensor], x: Tensor, mask: Tensor, *, beta: float = 1.0,
                        train: bool = False, linear: StackedLinear | None = None) -> Tensor:
        """Clients stacked: params [n, ...], x [n, b, L] -> logits [n, b, L, vocab] (`mask` and
        `linear` unused: no statistic spans samples and no layer is declared for fusing)."""
        factor = 1.0 / beta if self.scaler and train else 1.0
        return transformer_forward_stacked(params, x, layers=self.layers, heads=self.heads, factor=factor)

    def _heads(self, t: Tensor) -> Tensor:
        """[b, L, heads * d] -> [b, heads, L, d]: each head's channels are one segment of the axis."""
        return t.unflatten(-1, (self.heads, -1)).transpose(-3, -2)

    def flops_per_sample(self, widths: Sequence[int], input_shape: tuple[int, ...]) -> int:
        """Multiply-adds x2 of one forward pass over a sequence of input_shape[0] tokens, with the
        groups at `widths` channels (attention scores and mixing over the causal half)."""
        length = input_shape[0]
        dim = widths[0]
        per_token = 2 * dim * self.vocab
        for layer in range(self.layers):
            att, hid = widths[1 + 2 * layer], widths[2 + 2 * layer]
            per_token += 2 * (4 * dim * att + 2 * dim * hid) + 2 * att * (length + 1)  # QK^T and AV, causal mean
        return per_token * length


def _causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(d) + causal mask) v, written out: vmap batches these matmuls, while
    F.scaled_dot_product_attention has no batching rule on the CPU (a per-client loop under vmap)."""
    length = q.shape[-2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    future = torch.ones(length, length, dtype=torch.bool, device=q.device).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(dim=-1) @ v


def _layer_norm(h: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    return F.layer_norm(h, (h.shape[-1],), weight, bias, LN_EPS)
