"""Local training of many same-width clients in lock-step (docs/algorithm.md#local-training), on stacked tensors.

Each client sees exactly the minibatches the reference loop gives it (same generator, same
`epoch_orders`); short batches are padded and masked. Clients are ordered by decreasing number
of local steps, so the clients that still have data at step s are a prefix [:k] and every step
works on views of that prefix (idle clients cost nothing and are never updated).

Per-client SGD (torch.optim.SGD semantics, fresh state) is applied in place. Linear layers never
materialize their weight gradient: autograd stops at each layer's output y = h W^T + b. With few
local steps the weight stays implicit as start + low-rank terms for the whole round
(`implicit_linear`); otherwise its update is fused into one batched GEMM,
`buf <- mu*buf + dY^T h` (or straight into the weight without momentum). Both save several
passes over the largest tensors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from ..models import ModelFamily, stacked_forward_of, vmapped_forward
from ..models.factored import FactoredStack
from ..models.family import relu_chain_of
from ..models.stacked import LinearLayer, SliceSet, stacked_linear
from ..seeding import STREAM_TRAIN, torch_generators
from .client_major import train_client_major
from .data_span_linear import DataSpanLinearWeight, use_data_span
from .implicit_linear import ImplicitLinearWeight, shares_slices, use_implicit
from .local import CLIP_EPS, LocalTraining, epoch_orders, token_cross_entropy

if TYPE_CHECKING:  # the Triton path is optional: its module loads only when used
    from ..kernels.grouped_gemm_problems import GroupedProblems

@dataclass(frozen=True)
class StepSchedule:
    """Data rows of every local step for n clients: rows [S, n, b] (indices into the shared
    training tensor), sample mask [S, n, b], the number of clients with a batch per step
    (clients are sorted so those are a prefix), the same rows as positions [S, n, b] in each
    client's own sample list (0 on padding), and those lists: samples [n, m] (rows of the
    training tensor, padded with row 0) with counts [n]."""

    rows: Tensor
    mask: Tensor
    active: list[int]
    positions: Tensor
    samples: Tensor
    counts: Tensor


def local_steps(num_samples: int, batch_size: int, epochs: int) -> int:
    return epochs * math.ceil(num_samples / batch_size)


def build_schedule(client_rows: Sequence[Tensor], batch_size: int, epochs: int, seed: int, round_idx: int,
                   clients: Sequence[int]) -> StepSchedule:
    """Minibatch table from each client's (seed, round, client) generator. Clients must come in
    order of non-increasing step count."""
    steps = [local_steps(len(r), batch_size, epochs) for r in client_rows]
    if any(a < b for a, b in zip(steps, steps[1:], strict=False)):
        raise ValueError("clients must be ordered by non-increasing number of local steps")
    total, n = (steps[0] if steps else 0), len(clients)
    rows = torch.zeros(total, n, batch_size, dtype=torch.int64)
    positions = torch.zeros_like(rows)
    mask = torch.zeros(total, n, batch_size, dtype=torch.bool)
    counts = torch.tensor([len(r) for r in client_rows], dtype=torch.int64)
    samples = torch.zeros(n, int(counts.max()) if n else 0, dtype=torch.int64)
    # The orders come from each client's own generator; the rest is filled per sample count at once.
    generators = torch_generators(seed, STREAM_TRAIN, round_idx, last=np.asarray(clients, dtype=np.int64))
    orders = [torch.stack(epoch_orders(len(own), epochs, g)) for own, g in zip(client_rows, generators, strict=True)]
    by_count: dict[int, list[int]] = {}
    for i, own in enumerate(client_rows):
        by_count.setdefault(len(own), []).append(i)
    for m, members in by_count.items():
        if m == 0:
            continue
        idx = torch.tensor(members)
        own = torch.stack([client_rows[i] for i in members])  # [c, m]
        samples[idx, :m] = own
        pos = torch.full((len(members), epochs, math.ceil(m / batch_size) * batch_size), -1, dtype=torch.int64)
        pos[:, :, :m] = torch.stack([orders[i] for i in members])
        pos = pos.view(len(members), -1, batch_size)  # [c, steps, b]; -1 pads each epoch's last batch
        held = pos.clamp_min(0)
        span = slice(0, pos.shape[1])
        positions[span, idx] = held.transpose(0, 1)
        rows[span, idx] = own.gather(1, held.flatten(1)).view_as(held).transpose(0, 1)
        mask[span, idx] = (pos >= 0).transpose(0, 1)
    return StepSchedule(rows=rows, mask=mask, active=[sum(1 for n in steps if n > s) for s in range(total)],
                        positions=positions, samples=samples, counts=counts)


def fused_linear_layers(model: ModelFamily) -> dict[str, LinearLayer]:
    """Layers whose weight update is fused: the linear layers a hand-written stacked forward
    declares (a family without one trains every tensor through autograd)."""
    stacked = stacked_forward_of(model)
    return dict(stacked.stacked_linears) if stacked is not None else {}


def train_stacked(model: ModelFamily, params: Mapping[str, Tensor | SliceSet], x_all: Tensor, y_all: Tensor,
                  schedule: StepSchedule, *, beta: float, hp: LocalTraining, label_mask: Tensor | None = None,
                  linear_backend: str = "torch", factored: bool = False,
                  client_major: bool = False) -> tuple[dict[str, Tensor | FactoredStack], Tensor]:
    """Train stacked client params [n, ...] IN PLACE (the caller owns them, e.g. a fresh gather);
    returns (params, mean loss per client). A parameter given as a `SliceSet` (distinct slices)
    is copied per client where it trains explicitly. Everything runs on the device of `x_all`;
    the schedule and parameters are moved there.

    `label_mask` [n, classes] bool removes absent classes from each client's softmax.
    `factored`: an input layer trained in data-span form comes back as a `FactoredStack` (its
    weights never written out; aggregation sums the factors) instead of dense weights.
    `client_major`: a ReLU chain (`models.family.ReluChain`) on the CPU trains client by client in
    a compiled kernel (`client_major.py`, needs numba), everything else step by step here.
    `linear_backend="triton"` runs every linear layer through the grouped GEMM kernels
    (`fedbrb_fast.kernels.grouped_gemm`, one launch per layer and pass, weights as ordinary
    autograd leaves) instead of the fused / implicit torch path.

    A family without a hand-written `forward_stacked` runs its functional forward vmapped over
    the clients (`vmapped_forward`), every tensor trained through autograd and fused SGD."""
    device = x_all.device
    rows_all, mask_all, pos_all = (t.to(device) for t in (schedule.rows, schedule.mask, schedule.positions))
    stacked = stacked_forward_of(model)
    layers = fused_linear_layers(model) if linear_backend == "torch" else {}
    grouped = _GroupedLinear() if linear_backend == "triton" and stacked is not None else None
    fused = {t for layer in layers.values() for t in (layer.weight, layer.bias)}
    steps, batch = len(schedule.active), schedule.rows.shape[2]
    span_layer = stacked.input_layer if stacked is not None and stacked.input_layer in layers else None
    if span_layer is not None and not use_data_span(model.layout.spec(layers[span_layer].weight).shape[1],
                                                    schedule.samples.shape[1]):
        span_layer = None
    span_weight = layers[span_layer].weight if span_layer else None
    span = _data_span(params[span_weight], x_all, schedule) if span_weight else None
    chain = relu_chain_of(model) if client_major and device.type == "cpu" and linear_backend == "torch" else None
    if chain is not None:
        return train_client_major(chain, params, x_all, y_all, rows=schedule.rows, positions=schedule.positions,
                                  mask=schedule.mask, steps=steps_per_client(schedule.active, len(schedule.counts)),
                                  beta=beta, hp=hp,
                                  label_mask=label_mask, span=span, factored=factored)
    starts = {name: _slice_set(params[layer.weight]) for name, layer in layers.items() if name != span_layer}
    implicit = {name: ImplicitLinearWeight(w0.to(device), steps, batch) for name, w0 in starts.items()
                if use_implicit(w0.unique.shape[1], w0.unique.shape[2], steps, batch, shared=shares_slices(w0))}
    # Only explicitly trained tensors get per-client copies.
    kept_out = {layers[name].weight for name in [*implicit, *([span_layer] if span_layer else [])]}
    theta = {k: (v.stacked() if isinstance(v, SliceSet) else v).to(device).detach() for k, v in params.items()
             if k not in kept_out}
    n = next(iter(theta.values())).shape[0]
    # Filled at each client's first step (is_first_step), so never zeroed.
    momentum = {k: torch.empty_like(v) for k, v in theta.items()} if hp.momentum else {}
    weight_grads = {name: torch.empty_like(theta[layer.weight]) for name, layer in layers.items()
                    if name not in implicit and name != span_layer} if hp.momentum else {}
    loss_sum = torch.zeros(n, dtype=torch.float64, device=device)
    for s, k in enumerate(schedule.active):
        mask, rows, pos = mask_all[s, :k], rows_all[s, :k], pos_all[s, :k]
        # Views of the active prefix; updated in place, so theta itself trains.
        leaves = {name: t[:k].detach() for name, t in theta.items()}
        others = [name for name in leaves if name not in fused]
        for name in others:
            leaves[name].requires_grad_(True)
        records: dict[str, tuple[Tensor, Tensor]] = {}

        def linear(h: Tensor, name: str, leaves: dict[str, Tensor] = leaves, pos: Tensor = pos,
                   records: dict[str, tuple[Tensor, Tensor]] = records) -> Tensor:
            layer = layers[name] if name in layers else _declared(model, name)
            bias = leaves[layer.bias]
            if span is not None and name == span_layer:
                y = span.forward(pos, bias)
            elif name in implicit:
                y = implicit[name].forward(h, bias)
            elif grouped is not None:
                return grouped(h, leaves[layer.weight], bias)
            else:
                y = stacked_linear(h, leaves[layer.weight], bias)
            if not y.requires_grad:
                y.requires_grad_(True)
            records[name] = (h.detach(), y)
            return y

        # The input layer in data-span form reads its inputs from P and K: the family passes x
        # only to it (input_layer), so no rows are gathered.
        x = x_all.new_empty(k, batch, 0) if span is not None else take_rows(x_all, rows)
        if stacked is not None:
            logits = stacked.forward_stacked(leaves, x, mask, beta=beta, train=True, linear=linear)
        else:
            logits = vmapped_forward(model, leaves, x, mask, beta=beta, train=True)
        if label_mask is not None:  # [k, classes] over logits [k, b, (L,) classes]
            logits = logits.masked_fill(~label_mask[:k].view(k, *[1] * (logits.dim() - 2), -1), float("-inf"))
        labels = take_rows(y_all, rows)
        # a sample's loss is the mean over its labels (one, or one per token), as the reference's batch mean
        per_sample = token_cross_entropy(logits, labels, reduction="none").view(*mask.shape, -1).mean(dim=2)
        per_sample = torch.where(mask, per_sample, torch.zeros((), dtype=per_sample.dtype))
        per_client = per_sample.sum(dim=1) / mask.sum(dim=1).clamp_min(1)
        outputs = [records[layer][1] for layer in layers]
        grads = torch.autograd.grad(per_client.sum(), outputs + [leaves[o] for o in others])
        d_out = dict(zip(layers, grads[: len(layers)], strict=True))  # dLoss/dy per linear layer, [k, b, out]
        g_other = dict(zip(others, grads[len(layers):], strict=True))
        with torch.no_grad():
            if hp.clip_norm is not None:
                weight_sq = {layer: span.grad_sq_norm(pos, dy) if span is not None and layer == span_layer
                             else _weight_grad_sq(dy, records[layer][0]) for layer, dy in d_out.items()}
                coef = _clip_coefficients(d_out, weight_sq, g_other, hp.clip_norm)
                d_out = {layer: d * coef.view(-1, 1, 1) for layer, d in d_out.items()}
                g_other = {name: g * coef.view(-1, *([1] * (g.dim() - 1))) for name, g in g_other.items()}
            update = _SGDStep(momentum, k)
            for name, g in g_other.items():
                update.add(name, leaves[name], g)
            for name, layer in layers.items():
                h, _ = records[name]
                dy = d_out[name]
                update.add(layer.bias, leaves[layer.bias], dy.sum(dim=1))
                if span is not None and name == span_layer:
                    span.step(pos, dy, hp)
                elif name in implicit:
                    implicit[name].step(h, dy, hp)
                elif hp.momentum:  # the gradient goes to one buffer per layer, reused every step
                    grad = torch.bmm(dy.transpose(1, 2), h, out=weight_grads[name][:k])
                    update.add(layer.weight, leaves[layer.weight], grad)
                else:  # the gradient's GEMM writes straight into the weight
                    leaves[layer.weight].baddbmm_(dy.transpose(1, 2), h, beta=1.0 - hp.lr * hp.weight_decay,
                                                  alpha=-hp.lr)
            update.apply(hp, first=s == 0)
        loss_sum[:k] += per_client.detach().to(torch.float64)
    trained: dict[str, Tensor | FactoredStack] = {name: theta[name] for name in params if name in theta}
    for name, weight in implicit.items():
        trained[layers[name].weight] = weight.factored() if factored else weight.materialize()
    if span is not None and span_weight is not None:
        trained[span_weight] = span.factored() if factored else span.materialize()
    steps_done = steps_per_client(schedule.active, n).to(device)
    trained = {name: trained[name] for name in params}
    return trained, (loss_sum / steps_done.clamp_min(1)).to(torch.float32)


class _SGDStep:
    """One step's parameter updates, applied together by torch's fused SGD kernel (one pass per
    tensor: d = g + wd*p, buf = mu*buf + d, p -= lr*buf; buf = d at a client's first step, which
    is step 0 for every client)."""

    def __init__(self, momentum: dict[str, Tensor], k: int) -> None:
        self.momentum, self.k = momentum, k
        self.params: list[Tensor] = []
        self.grads: list[Tensor] = []
        self.bufs: list[Tensor] = []

    def add(self, name: str, param: Tensor, grad: Tensor) -> None:
        # The fused kernel walks raw memory in one layout: a channels-last conv gradient would be
        # read in the wrong order.
        self.params.append(param)
        self.grads.append(grad.contiguous())
        if self.momentum:
            self.bufs.append(self.momentum[name][: self.k])

    def apply(self, hp: LocalTraining, *, first: bool) -> None:
        if self.params:
            torch._fused_sgd_(self.params, self.grads, self.bufs, weight_decay=hp.weight_decay,
                              momentum=hp.momentum, lr=hp.lr, dampening=0.0, nesterov=False, maximize=False,
                              is_first_step=first)


def _declared(model: ModelFamily, name: str) -> LinearLayer:
    """A linear layer of the family's stacked forward (the Triton path takes them all, fused or not)."""
    stacked = stacked_forward_of(model)
    if stacked is None or name not in stacked.stacked_linears:
        raise KeyError(f"{model.arch}: forward_stacked computed a linear layer {name!r} it does not declare")
    return stacked.stacked_linears[name]


def _data_span(w0: Tensor | SliceSet, x_all: Tensor, schedule: StepSchedule) -> DataSpanLinearWeight:
    """The input layer in data-span form: X_c [n, m, in] with zero rows past each client's data."""
    device = x_all.device
    slices = _slice_set(w0)
    samples = take_rows(x_all, schedule.samples.to(device)).flatten(2)
    real = torch.arange(samples.shape[1]).unsqueeze(0) < schedule.counts.unsqueeze(1)
    if not bool(real.all()):  # zero the padding rows of clients with fewer samples
        samples.mul_(real.to(device=device, dtype=samples.dtype).unsqueeze(2))
    return DataSpanLinearWeight(slices.to(device), samples)


def take_rows(t: Tensor, rows: Tensor) -> Tensor:
    """`t[rows]` for an index tensor of any shape, as one row gather (3x faster than advanced
    indexing of MNIST images here)."""
    return t.index_select(0, rows.flatten()).view(*rows.shape, *t.shape[1:])


def _slice_set(w: Tensor | SliceSet) -> SliceSet:
    """Stacked weights as distinct slices (a tensor: one slice per client)."""
    return w if isinstance(w, SliceSet) else SliceSet(w.detach(), torch.arange(len(w), device=w.device))


def steps_per_client(active: list[int], n: int) -> Tensor:
    """Local steps of each of n clients [n] (int64), from the number of active clients per step."""
    return (torch.tensor(active, dtype=torch.int64).unsqueeze(1) > torch.arange(n)).sum(dim=0)


class _GroupedLinear:
    """Stacked linear layers through the Triton grouped GEMM: client i's rows [i*b, (i+1)*b) of
    the packed activations use its own weight matrix (source i, window at 0)."""

    def __init__(self) -> None:
        from ..kernels.grouped_gemm import GroupedProblems, grouped_linear_triton

        self._build, self._run = GroupedProblems.build, grouped_linear_triton
        self._problems: dict[tuple[int, ...], GroupedProblems] = {}  # built once per shape, reused every step

    def __call__(self, h: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        k, b, in_f = h.shape
        out_f = weight.shape[1]
        key = (k, b, out_f, in_f)
        if key not in self._problems:
            self._problems[key] = self._build([b] * k, out_f, in_f)
        return self._run(h.reshape(k * b, in_f), weight, bias, self._problems[key]).view(k, b, out_f)


def _weight_grad_sq(dy: Tensor, h: Tensor) -> Tensor:
    """||dY^T h||_F^2 per client = sum((dY dY^T) * (h h^T)), from b x b Gram matrices."""
    return (torch.bmm(dy, dy.transpose(1, 2)) * torch.bmm(h, h.transpose(1, 2))).sum(dim=(1, 2))


def _clip_coefficients(d_out: dict[str, Tensor], weight_sq: dict[str, Tensor], g_other: dict[str, Tensor],
                       max_norm: float) -> Tensor:
    """Per client min(1, max_norm / (||grad|| + eps)) as clip_grad_norm_; the linear weights'
    squared norms `weight_sq` come without a weight-sized tensor."""
    sq = torch.stack([*weight_sq.values(), *(g.flatten(1).square().sum(dim=1) for g in g_other.values()),
                      *(dy.sum(dim=1).square().sum(dim=1) for dy in d_out.values())]).sum(dim=0)
    return (max_norm / (sq.sqrt() + CLIP_EPS)).clamp(max=1.0)
