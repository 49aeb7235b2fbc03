"""A test-only model family whose layout has a segmented channel group (docs/algorithm.md#segments),
shaped like one Transformer layer over vectors, so plans, coverage, every aggregation backend and
the Flower integration can be tested on segments without the Transformer itself:

    x -> emb (group 0, D) -> scaler -> h
    h -> q (group 1: R heads of d channels) -> scaler -> softmax within each head, times itself
      -> o (group 1 -> group 0) -> h + that
    h -> fc1 (group 2, F) -> scaler -> ReLU -> fc2 (group 2 -> group 0) -> h + that
    h -> out (the classes)

Group 0 (D) is adjacent to groups 1 and 2, which are not adjacent to each other (a star, as in
the Transformer): shear (0,0), (1,0), (1,0).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fedbrb_fast.models import ModelLayout, ParamSpec
from fedbrb_fast.models.functional import scale_activation
from fedbrb_fast.models.init import init_params

MODEL_DIM, HEADS, HEAD_DIM, HIDDEN = 16, 4, 8, 24


def segmented_layout(in_features: int = 6, num_classes: int = 5, *, dim: int = MODEL_DIM, heads: int = HEADS,
                     head_dim: int = HEAD_DIM, hidden: int = HIDDEN) -> ModelLayout:
    """Groups: 0 the model dimension D, 1 the head dimension (R = heads segments of head_dim), 2 the
    MLP's hidden units F."""
    qk = heads * head_dim
    return ModelLayout(
        group_sizes=(dim, qk, hidden),
        group_segments=(1, heads, 1),
        params=(
            ParamSpec("emb.weight", (dim, in_features), (0, None), "weight", fan_in=in_features),
            ParamSpec("emb.bias", (dim,), (0,), "bias", fan_in=in_features),
            ParamSpec("q.weight", (qk, dim), (1, 0), "weight", fan_in=dim),
            ParamSpec("q.bias", (qk,), (1,), "bias", fan_in=dim),
            ParamSpec("o.weight", (dim, qk), (0, 1), "weight", fan_in=qk),
            ParamSpec("fc1.weight", (hidden, dim), (2, 0), "weight", fan_in=dim),
            ParamSpec("fc1.bias", (hidden,), (2,), "bias", fan_in=dim),
            ParamSpec("fc2.weight", (dim, hidden), (0, 2), "weight", fan_in=hidden),
            ParamSpec("out.weight", (num_classes, dim), (None, 0), "weight", fan_in=dim),
            ParamSpec("out.bias", (num_classes,), (None,), "bias", fan_in=dim),
        ),
        classifier=("out.weight", "out.bias"),
    )


class SegmentedNet:
    arch = "segmented"

    def __init__(self, in_features: int = 6, num_classes: int = 5, **sizes: int) -> None:
        self.in_features, self.num_classes = in_features, num_classes
        self.layout = segmented_layout(in_features, num_classes, **sizes)
        self.heads = self.layout.segments(1)

    @property
    def batch_coupled(self) -> bool:
        return False

    def init(self, generator: torch.Generator) -> dict[str, Tensor]:
        return init_params(self.layout, generator)

    def forward(self, params: Mapping[str, Tensor], x: Tensor, *, beta: float = 1.0, train: bool = False,
                mask: Tensor | None = None) -> Tensor:
        def scaled(h: Tensor) -> Tensor:
            return scale_activation(h, beta=beta, train=train, scaler=True)

        h = scaled(F.linear(x.flatten(1), params["emb.weight"], params["emb.bias"]))
        q = scaled(F.linear(h, params["q.weight"], params["q.bias"]))
        heads = q.unflatten(1, (self.heads, -1))  # a client's head dimension holds its channels of every head
        h = h + F.linear((heads.softmax(dim=2) * heads).flatten(1), params["o.weight"])
        m = F.relu(scaled(F.linear(h, params["fc1.weight"], params["fc1.bias"])))
        h = h + F.linear(m, params["fc2.weight"])
        return F.linear(h, params["out.weight"], params["out.bias"])

    def flops_per_sample(self, widths: Sequence[int], input_shape: tuple[int, ...]) -> int:
        dim, qk, hidden = widths
        return 2 * (self.in_features * dim + 2 * dim * qk + 2 * dim * hidden + dim * self.num_classes)
