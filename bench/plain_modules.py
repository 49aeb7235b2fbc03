"""The per-client models of the plain loop (plain_loop.py), written the way HeteroFL and FedRolex
write theirs: an `nn.Module` of the client's widths, a scaler before every norm. Modules are named
like the project's tensors (`hidden{g}`, `stage{s}.block{j}.conv1`, `final_norm`, `out`, ...), so
state dicts share their keys.

Static BatchNorm is `nn.BatchNorm*d(track_running_stats=False)`: batch statistics in training and
evaluation, as the project's forwards compute them (a one-sample batch of vectors raises there).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedbrb_fast.models import CNN, MLP, Transformer

BLOCKS_PER_STAGE = 2


class Scaler(nn.Module):
    """HeteroFL's scaler: divide by the width ratio while training."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: Tensor) -> Tensor:
        return x / self.rate if self.training else x


def norm_module(kind: str, channels: int, groups: int, dims: int) -> nn.Module:
    if kind == "bn":
        return (nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d)(channels, momentum=None, track_running_stats=False)
    if kind == "gn":
        return nn.GroupNorm(groups, channels)
    return nn.Identity()


class PlainNet(nn.Module):
    """The global architecture at the client's `widths`: blocks named like the project's
    parameters (hidden{g}, norm{g}, out), so state dicts share their keys."""

    def __init__(self, model: MLP | CNN, widths: Sequence[int], rate: float) -> None:
        super().__init__()
        conv = model.arch == "cnn"
        fan_in = model.layout.params[0].shape[1]  # the first layer's input features (channels)
        self.blocks = len(widths)
        for g, width in enumerate(widths):
            layer = nn.Conv2d(fan_in, width, 3, padding=1) if conv else nn.Linear(fan_in, width)
            self.add_module(f"hidden{g}", layer)
            self.add_module(f"scaler{g}", Scaler(rate) if model.scaler and rate != 1.0 else nn.Identity())
            self.add_module(f"norm{g}", norm_module(model.norm, width, model.norm_groups, 2 if conv else 1))
            fan_in = width
        self.out = nn.Linear(fan_in, model.num_classes)
        self.pool = conv

    def forward(self, x: Tensor) -> Tensor:
        h = x if self.pool else x.flatten(1)
        for g in range(self.blocks):
            h = getattr(self, f"hidden{g}")(h)
            h = F.relu(getattr(self, f"norm{g}")(getattr(self, f"scaler{g}")(h)))
            if self.pool and g != self.blocks - 1:
                h = F.max_pool2d(h, 2)
        if self.pool:
            h = h.mean(dim=(2, 3))
        return self.out(h)


class PreActBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, norm: str, norm_groups: int, scaler: nn.Module) -> None:
        super().__init__()
        self.scaler = scaler
        self.norm1 = norm_module(norm, c_in, norm_groups, 2)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.norm2 = norm_module(norm, c_out, norm_groups, 2)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        # stride 1 on every stride-th pixel: oneDNN's strided 1x1 backward hangs or corrupts the heap on
        # AVX2 hosts at a few channels (fedbrb_fast.models.preresnet_stacked.pointwise_conv)
        self.stride = stride
        self.shortcut = nn.Conv2d(c_in, c_out, 1, bias=False) if stride != 1 or c_in != c_out else None

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.norm1(self.scaler(x)))
        shortcut = self.shortcut(out[:, :, ::self.stride, ::self.stride]) if self.shortcut is not None else x
        out = self.conv2(F.relu(self.norm2(self.scaler(self.conv1(out)))))
        return out + shortcut


class PlainPreResNet(nn.Module):
    """Stem conv, stages of pre-activation blocks at `widths` channels (stride 2 from the second
    stage on), final norm, ReLU, global average pool, classifier."""

    def __init__(self, in_channels: int, widths: Sequence[int], num_classes: int, *, norm: str, norm_groups: int,
                 scaler: bool, rate: float) -> None:
        super().__init__()
        scale = Scaler(rate) if scaler and rate != 1.0 else nn.Identity()
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        c_in = widths[0]
        for s, width in enumerate(widths):
            stage = nn.Module()
            for j in range(BLOCKS_PER_STAGE):
                stage.add_module(f"block{j}", PreActBlock(c_in, width, 2 if j == 0 and s > 0 else 1, norm,
                                                          norm_groups, scale))
                c_in = width
            self.add_module(f"stage{s}", stage)
        self.stages = len(widths)
        self.scaler = scale
        self.final_norm = norm_module(norm, c_in, norm_groups, 2)
        self.out = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        for s in range(self.stages):
            stage = getattr(self, f"stage{s}")
            for j in range(BLOCKS_PER_STAGE):
                h = getattr(stage, f"block{j}")(h)
        h = F.relu(self.final_norm(self.scaler(h)))
        return self.out(F.adaptive_avg_pool2d(h, 1).flatten(1))


class PlainBlock(nn.Module):
    """A pre-norm Transformer block: causal multi-head attention, then a GELU MLP; scalers where
    HeteroFL's and FedRolex's Transformers have them (Q, K, V and output projections, MLP hidden
    pre-activation and output)."""

    def __init__(self, dim: int, att: int, hidden: int, heads: int, scaler: nn.Module) -> None:
        super().__init__()
        self.heads, self.scaler = heads, scaler
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.k, self.v = nn.Linear(dim, att), nn.Linear(dim, att), nn.Linear(dim, att)
        self.o = nn.Linear(att, dim)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, h: Tensor) -> Tensor:
        b, length, _ = h.shape
        a = self.norm1(h)
        q, k, v = (self.scaler(proj(a)).view(b, length, self.heads, -1).transpose(1, 2)
                   for proj in (self.q, self.k, self.v))
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, length, -1)
        h = h + self.scaler(self.o(att))
        return h + self.scaler(self.fc2(F.gelu(self.scaler(self.fc1(self.norm2(h))))))


class PlainTransformer(nn.Module):
    """Token and position embeddings (scaled), pre-norm blocks, final LayerNorm, vocabulary logits."""

    def __init__(self, model: Transformer, widths: Sequence[int], rate: float) -> None:
        super().__init__()
        scale = Scaler(rate) if model.scaler and rate != 1.0 else nn.Identity()
        dim = widths[0]
        self.embed, self.pos = nn.Embedding(model.vocab, dim), nn.Embedding(model.context, dim)
        for layer in range(model.layers):
            self.add_module(f"layer{layer}", PlainBlock(dim, widths[1 + 2 * layer], widths[2 + 2 * layer],
                                                        model.heads, scale))
        self.layers, self.scaler = model.layers, scale
        self.norm, self.out = nn.LayerNorm(dim), nn.Linear(dim, model.vocab)

    def forward(self, x: Tensor) -> Tensor:
        positions = torch.arange(x.shape[1], device=x.device)
        h = self.scaler(self.embed(x) + self.pos(positions))
        for layer in range(self.layers):
            h = getattr(self, f"layer{layer}")(h)
        return self.out(self.norm(h))
