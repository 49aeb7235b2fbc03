"""Inputs and baselines shared by bench_aggregation.py and test_bench_aggregation.py.

A case is one FedBRB round's stacked client updates, built with the project's plans and models:
`mlp` = 1,000 clients of an MLP 784-[1024, 1024]-10 at width 1/8, `cnn` = 200 clients of the
HeteroFL CNN (hidden 64-128-256-512, CIFAR-shaped input) at width 1/16.

Bytes that must move: every client update read once, every global tensor read once and written
once. The copy baseline copies that many bytes; the fancy-index baseline is the per-client,
per-tensor loop of the HeteroFL/FedRolex reference code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fedbrb_fast.aggregation import Accumulator, AggregationRule, ClientBatch, aggregate, as_dense
from fedbrb_fast.models import CNN, MLP, ModelFamily, ModelLayout
from fedbrb_fast.models.stacked import gather_stacked
from fedbrb_fast.plans import make_round_plans

LAM = 0.3


@dataclass(frozen=True)
class Case:
    name: str
    layout: ModelLayout
    params: dict[str, Tensor]
    batch: ClientBatch
    num_blocks: int

    @property
    def client_bytes(self) -> int:
        return sum(as_dense(t).numel() * as_dense(t).element_size() for t in self.batch.params.values())

    @property
    def global_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.params.values())

    @property
    def moved_bytes(self) -> int:
        return self.client_bytes + 2 * self.global_bytes

    def rule(self, kind: str) -> AggregationRule:
        return AggregationRule("broadcast", LAM, self.num_blocks) if kind == "broadcast" else AggregationRule("overlap")


def make_case(name: str, scale: float = 1.0, hidden: list[int] | None = None, seed: int = 0) -> Case:
    """`scale` shrinks the client count (quick runs), `hidden` the model (default: the benchmark's
    full size); `seed` draws other plans and updates."""
    model: ModelFamily
    if name == "mlp":
        model, clients, width = MLP(784, hidden or [1024, 1024], 10, norm="bn"), 1000, 1 / 8
    elif name == "cnn":
        model, clients, width = CNN(3, hidden or [64, 128, 256, 512], 10, norm="bn"), 200, 1 / 16
    else:
        raise ValueError(f"unknown case {name!r}; expected 'mlp' or 'cnn'")
    clients = max(2, round(clients * scale))
    num_blocks = round(1 / width)
    layout = model.layout
    params = model.init(torch.Generator().manual_seed(seed))
    plans = make_round_plans("fedbrb", 5, list(range(clients)), [width] * clients, group_sizes=layout.group_sizes,
                             num_blocks=num_blocks, seed=seed, group_segments=layout.group_segments)
    indices = tuple(torch.stack([p.indices[g] for p in plans]) for g in range(len(layout.group_sizes)))
    g = torch.Generator().manual_seed(seed + 1)
    trained = {}
    for spec in layout.params:
        sub = gather_stacked(params[spec.name], spec, indices)
        trained[spec.name] = sub.add_(torch.randn(sub.shape, generator=g), alpha=0.01)
    weights = torch.randint(10, 100, (clients,), generator=g).to(torch.float64)
    return Case(name, layout, params, ClientBatch(tuple(range(clients)), weights, indices, trained), num_blocks)


def run_backend(case: Case, kind: str, backend: str, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """One aggregation through the public API (validation included)."""
    if dtype is None:
        return aggregate(case.params, case.layout, [case.batch], case.rule(kind), backend=backend).params
    acc = Accumulator(case.params, case.layout, case.rule(kind), backend=backend, dtype=dtype)
    acc.add(case.batch)
    return acc.finalize().params


def fancy_index_loop(case: Case) -> dict[str, Tensor]:
    """HeteroFL/FedRolex-style overlap averaging: for each client and tensor,
    `tmp[meshgrid(idx)] += w * update; count[meshgrid(idx)] += w`."""
    batch, out = case.batch, {}
    weights = batch.weights.tolist()
    for spec in case.layout.params:
        p = case.params[spec.name]
        tmp, count = torch.zeros_like(p), torch.zeros_like(p)
        stacked = batch.params[spec.name]
        for i, w in enumerate(weights):
            idx = [batch.indices[g][i] if g is not None else torch.arange(n)
                   for n, g in zip(spec.shape, spec.axis_groups, strict=True)]
            mesh = torch.meshgrid(*idx, indexing="ij")
            tmp[mesh] += w * stacked[i]
            count[mesh] += w
        out[spec.name] = torch.where(count > 0, tmp / count.clamp_min(1e-30), p)
    return out


def copy_buffers(case: Case) -> tuple[Tensor, Tensor]:
    n = case.moved_bytes // 4
    return torch.randn(n), torch.empty(n)
