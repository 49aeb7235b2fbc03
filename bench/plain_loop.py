"""The baseline users run today: a per-client loop written the way HeteroFL and FedRolex write theirs.

Per client: build an `nn.Module` of the client's width, load its sliced tensors (gathered from the
global model with the plan's index sets through `torch.meshgrid`), train it with
`torch.optim.SGD` on shuffled minibatches, keep its state dict. Then aggregate by a
per-parameter meshgrid scatter into the global model with the project's rule for the method
(overlap averaging, or FedBRB's weighted broadcast; docs/algorithm.md).

The minibatch order comes from the project's `(seed, round, client)` generators, so the loop
computes the same model as the engines (checked in tests/test_engine_benchmark_baseline.py); data are
indexed straight from tensors (no DataLoader), which only makes this baseline faster. It runs where
the global model is (the GPU check times it on the GPU).
The modules (plain_modules.py) differ from the project's forwards by design of the peer code:
static BatchNorm is `nn.BatchNorm*d(track_running_stats=False)` (a one-sample batch of vectors
raises there), and label masking is not supported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from plain_modules import PlainNet, PlainPreResNet, PlainTransformer
from torch import Tensor, nn

from fedbrb_fast.aggregation import AggregationRule
from fedbrb_fast.data import FederatedData
from fedbrb_fast.models import CNN, MLP, ModelLayout, ParamSpec, Transformer
from fedbrb_fast.models.preresnet import PreResNet, blocks
from fedbrb_fast.plans import ClientPlan
from fedbrb_fast.seeding import STREAM_TRAIN, torch_generator
from fedbrb_fast.training import LocalTraining


def positions(spec: ParamSpec, indices: Sequence[Tensor], device: torch.device) -> list[Tensor]:
    """Global index along every axis of the client tensor (whole axes: arange), on `device`."""
    return [indices[g].to(device) if g is not None else torch.arange(n, device=device)
            for n, g in zip(spec.shape, spec.axis_groups, strict=True)]


def split_model(params: Mapping[str, Tensor], layout: ModelLayout, indices: Sequence[Tensor]) -> dict[str, Tensor]:
    """The client's state dict: each global tensor indexed with the meshgrid of its positions."""
    return {s.name: params[s.name][torch.meshgrid(*positions(s, indices, params[s.name].device), indexing="ij")]
            .clone() for s in layout.params}


PlainFamily = MLP | CNN | PreResNet | Transformer  # the families the plain loop has modules for


def client_module(model: PlainFamily, plan: ClientPlan) -> nn.Module:
    """The global architecture at the client's widths."""
    widths = [len(ix) for ix in plan.indices]
    if isinstance(model, PreResNet):
        stage_widths = [widths[b.out_stream] for b in blocks(len(model.widths))][::2]  # each stage's stream
        return PlainPreResNet(model.in_channels, stage_widths, model.num_classes, norm=model.norm,
                              norm_groups=model.norm_groups, scaler=model.scaler, rate=plan.width)
    if isinstance(model, Transformer):
        return PlainTransformer(model, widths, plan.width)
    return PlainNet(model, widths, plan.width)


def train_client(model: PlainFamily, state: dict[str, Tensor], plan: ClientPlan, x: Tensor, y: Tensor,
                 hp: LocalTraining, generator: torch.Generator) -> dict[str, Tensor]:
    net = client_module(model, plan).to(x.device)
    net.load_state_dict(state)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
    for _ in range(hp.epochs):
        perm = torch.randperm(len(y), generator=generator).to(x.device)
        for batch in perm.split(hp.batch_size):
            opt.zero_grad()
            logits = net(x[batch])  # [b, classes], or [b, L, vocab] for next-token targets [b, L]
            loss = F.cross_entropy(logits.flatten(0, -2), y[batch].flatten())
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
    broadcast sums A, C (per element) and S, W (per in-tile offset; an axis of R segments, such as
    attention heads, has R * K tile positions)."""
    new = {}
    for spec in layout.params:
        p = params[spec.name]
        # tile positions per axis: K, times the segments of a segmented group (docs/algorithm.md#segments)
        tiles = [rule.num_blocks * layout.segments(g) if g is not None else 1 for g in spec.axis_groups]
        tile = [n // t for n, t in zip(spec.shape, tiles, strict=True)]
        num, den = torch.zeros_like(p), torch.zeros_like(p)
        s_sum, w_sum = torch.zeros(tile, device=p.device), torch.zeros(tile, device=p.device)
        for r in results:
            pos = positions(spec, r.plan.indices, p.device)
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
            top = (1 - rule.lam) * num + rule.lam * s_sum.repeat(tiles)
            bottom = (1 - rule.lam) * den + rule.lam * w_sum.repeat(tiles)
            new[spec.name] = torch.where(bottom > 0, p + top / bottom.clamp_min(torch.finfo(p.dtype).tiny), p)
    return new


def plain_round(model: PlainFamily, params: Mapping[str, Tensor], data: FederatedData, plans: Sequence[ClientPlan],
                hp: LocalTraining, rule: AggregationRule, *, seed: int, round_idx: int) -> dict[str, Tensor]:
    """One round: every client trained in turn, then aggregated; returns the new global model."""
    results = []
    for plan in plans:
        state = split_model(params, model.layout, plan.indices)
        device = next(iter(params.values())).device  # the plain loop runs where the global model is
        x, y = (t.to(device) for t in data.client_data(plan.client))
        generator = torch_generator(seed, STREAM_TRAIN, round_idx, plan.client)
        trained = train_client(model, state, plan, x, y, hp, generator)
        results.append(ClientResult(plan, float(data.num_samples(plan.client)), trained))
    return aggregate(params, model.layout, results, rule)

