"""The baseline users run today: a per-client loop written the way HeteroFL and FedRolex write theirs.

Per client: build an `nn.Module` of the client's width, load its sliced tensors (gathered from the
global model with the plan's index sets through `torch.meshgrid`), train it with
`torch.optim.SGD` on shuffled minibatches, keep its state dict. Then aggregate by a
per-parameter meshgrid scatter into the global model with the project's rule for the method
(overlap averaging, or FedBRB's weighted broadcast; docs/algorithm.md).

The minibatch order comes from the project's `(seed, round, client)` generators, so the loop
computes the same model as the engines (checked in tests/test_engine_benchmark_baseline.py); data are
indexed straight from tensors (no DataLoader), which only makes this baseline faster.
Differences from the project's modules, by design of the peer code: static BatchNorm is
`nn.BatchNorm*d(track_running_stats=False)` (a one-sample batch of vectors raises there), and
label masking is not supported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedbrb_fast.aggregation import AggregationRule
from fedbrb_fast.data import FederatedData
from fedbrb_fast.models import CNN, MLP, ModelLayout, ParamSpec
from fedbrb_fast.plans import ClientPlan
from fedbrb_fast.seeding import STREAM_TRAIN, torch_generator
from fedbrb_fast.training import LocalTraining


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


def positions(spec: ParamSpec, indices: Sequence[Tensor]) -> list[Tensor]:
    """Global index along every axis of the client tensor (whole axes: arange)."""
    return [indices[g] if g is not None else torch.arange(n) for n, g in zip(spec.shape, spec.axis_groups, strict=True)]


def split_model(params: Mapping[str, Tensor], layout: ModelLayout, indices: Sequence[Tensor]) -> dict[str, Tensor]:
    """The client's state dict: each global tensor indexed with the meshgrid of its positions."""
    return {s.name: params[s.name][torch.meshgrid(*positions(s, indices), indexing="ij")].clone()
            for s in layout.params}


def train_client(model: MLP | CNN, state: dict[str, Tensor], plan: ClientPlan, x: Tensor, y: Tensor, hp: LocalTraining,
                 generator: torch.Generator) -> dict[str, Tensor]:
    net = PlainNet(model, [len(ix) for ix in plan.indices], plan.width)
    net.load_state_dict(state)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
    for _ in range(hp.epochs):
        perm = torch.randperm(len(y), generator=generator)
        for batch in perm.split(hp.batch_size):
            opt.zero_grad()
            loss = F.cross_entropy(net(x[batch]), y[batch])
            loss.backward()
            if hp.clip_norm is not None:
                nn.utils.clip_grad_norm_(net.parameters(), hp.clip_norm)
            opt.step()
    return {k: v.detach() for k, v in net.state_dict().items()}


@dataclass(frozen=True)
class ClientResult:
    plan: ClientPlan
    weight: float
    state: dict[str, Tensor]


def aggregate(params: Mapping[str, Tensor], layout: ModelLayout, results: Sequence[ClientResult],
              rule: AggregationRule) -> dict[str, Tensor]:
    """Per parameter, per client: `tmp[meshgrid] += w * theta` (overlap averaging) or the
    broadcast sums A, C (per element) and S, W (per in-tile offset)."""
    new = {}
    for spec in layout.params:
        p = params[spec.name]
        sliced = {a for a, g in enumerate(spec.axis_groups) if g is not None}
        tile = [n // rule.num_blocks if a in sliced else n for a, n in enumerate(spec.shape)]
        num, den = torch.zeros_like(p), torch.zeros_like(p)
        s_sum, w_sum = torch.zeros(tile), torch.zeros(tile)
        for r in results:
            pos = positions(spec, r.plan.indices)
            mesh = torch.meshgrid(*pos, indexing="ij")
            theta = r.state[spec.name]
            if rule.kind == "overlap":
                num[mesh] += r.weight * theta
                den[mesh] += r.weight
            else:
                delta = theta - p[mesh]
                num[mesh] += r.weight * delta
                den[mesh] += r.weight
                offsets = torch.meshgrid(*[ix % tile[a] for a, ix in enumerate(pos)], indexing="ij")
                s_sum.index_put_(offsets, r.weight * delta, accumulate=True)
                w_sum.index_put_(offsets, torch.full_like(delta, r.weight), accumulate=True)
        if rule.kind == "overlap":
            new[spec.name] = torch.where(den > 0, num / den.clamp_min(torch.finfo(p.dtype).tiny), p)
        else:
            reps = [rule.num_blocks if a in sliced else 1 for a in range(p.dim())]
            top = (1 - rule.lam) * num + rule.lam * s_sum.repeat(reps)
            bottom = (1 - rule.lam) * den + rule.lam * w_sum.repeat(reps)
            new[spec.name] = torch.where(bottom > 0, p + top / bottom.clamp_min(torch.finfo(p.dtype).tiny), p)
    return new


def plain_round(model: MLP | CNN, params: Mapping[str, Tensor], data: FederatedData, plans: Sequence[ClientPlan],
                hp: LocalTraining, rule: AggregationRule, *, seed: int, round_idx: int) -> dict[str, Tensor]:
    """One round: every client trained in turn, then aggregated; returns the new global model."""
    results = []
    for plan in plans:
        state = split_model(params, model.layout, plan.indices)
        x, y = data.client_data(plan.client)
        generator = torch_generator(seed, STREAM_TRAIN, round_idx, plan.client)
        trained = train_client(model, state, plan, x, y, hp, generator)
        results.append(ClientResult(plan, float(data.num_samples(plan.client)), trained))
    return aggregate(params, model.layout, results, rule)

