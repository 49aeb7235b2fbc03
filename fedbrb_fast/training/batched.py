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

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models import Model
from ..models.stacked import stacked_linear
from ..seeding import STREAM_TRAIN, torch_generator
from .implicit_linear import ImplicitLinearWeight, use_implicit
from .local import LocalTraining, epoch_orders

CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_ adds this to the norm


@dataclass(frozen=True)
class StepSchedule:
    """Data rows of every local step for n clients: rows [S, n, b] (indices into the shared
    training tensor), sample mask [S, n, b], and the number of clients with a batch per step
    (clients are sorted so those are a prefix)."""

    rows: Tensor
    mask: Tensor
    active: list[int]


def local_steps(num_samples: int, batch_size: int, epochs: int) -> int:
    return epochs * math.ceil(num_samples / batch_size)


def build_schedule(client_rows: Sequence[Tensor], batch_size: int, epochs: int, seed: int, round_idx: int,
                   clients: Sequence[int]) -> StepSchedule:
    """Minibatch table from each client's (seed, round, client) generator. Clients must come in
    order of non-increasing step count."""
    steps = [local_steps(len(r), batch_size, epochs) for r in client_rows]
    if any(a < b for a, b in zip(steps, steps[1:])):
        raise ValueError("clients must be ordered by non-increasing number of local steps")
    total = steps[0] if steps else 0
    rows = torch.zeros(total, len(clients), batch_size, dtype=torch.int64)
    mask = torch.zeros(total, len(clients), batch_size, dtype=torch.bool)
    for i, (own, c) in enumerate(zip(client_rows, clients)):
        per_epoch = math.ceil(len(own) / batch_size) * batch_size
        pos = torch.full((epochs, per_epoch), -1, dtype=torch.int64)
        for e, perm in enumerate(epoch_orders(len(own), epochs, torch_generator(seed, STREAM_TRAIN, round_idx, c))):
            pos[e, : len(perm)] = perm
        pos = pos.view(-1, batch_size)
        rows[: len(pos), i] = own[pos.clamp_min(0)]
        mask[: len(pos), i] = pos >= 0
    return StepSchedule(rows=rows, mask=mask, active=[sum(1 for n in steps if n > s) for s in range(total)])


def fused_linear_layers(model: Model) -> list[str]:
    """Layers whose weight update is fused (2-d weight [out, in] with a bias)."""
    names = set(model.layout.names)
    return [n.removesuffix(".weight") for n in model.layout.names
            if n.endswith(".weight") and len(model.layout.spec(n).shape) == 2 and n.replace("weight", "bias") in names]


def train_stacked(model: Model, params: Mapping[str, Tensor], x_all: Tensor, y_all: Tensor, schedule: StepSchedule,
                  *, beta: float, hp: LocalTraining, label_mask: Tensor | None = None,
                  linear_backend: str = "torch") -> tuple[dict[str, Tensor], Tensor]:
    """Train stacked client params [n, ...] IN PLACE (the caller owns them, e.g. a fresh gather);
    returns (params, mean loss per client). Everything runs on the device of `params` and
    `x_all`; the schedule is moved there.

    `label_mask` [n, classes] bool removes absent classes from each client's softmax.
    `linear_backend="triton"` runs every linear layer through the grouped GEMM kernels
    (`fedbrb_fast.kernels.grouped_gemm`, one launch per layer and pass, weights as ordinary
    autograd leaves) instead of the fused / implicit torch path."""
    theta = {k: v.detach() for k, v in params.items()}
    device = next(iter(theta.values())).device
    rows_all, mask_all = schedule.rows.to(device), schedule.mask.to(device)
    layers = fused_linear_layers(model) if linear_backend == "torch" else []
    grouped = _GroupedLinear() if linear_backend == "triton" else None
    fused = {f"{layer}.weight" for layer in layers} | {f"{layer}.bias" for layer in layers}
    n = next(iter(theta.values())).shape[0]
    steps, batch = len(schedule.active), schedule.rows.shape[2]
    implicit = {layer: ImplicitLinearWeight(theta[f"{layer}.weight"], steps, batch) for layer in layers
                if use_implicit(*theta[f"{layer}.weight"].shape[1:], steps, batch)}
    momentum = ({k: torch.zeros_like(v) for k, v in theta.items() if k.removesuffix(".weight") not in implicit}
                if hp.momentum else {})
    loss_sum = torch.zeros(n, dtype=torch.float64, device=device)
    for s, k in enumerate(schedule.active):
        mask, rows = mask_all[s, :k], rows_all[s, :k]
        # Views of the active prefix; updated in place, so theta itself trains.
        leaves = {name: t[:k].detach() for name, t in theta.items()}
        others = [name for name in leaves if name not in fused]
        for name in others:
            leaves[name].requires_grad_(True)
        records: dict[str, tuple[Tensor, Tensor]] = {}

        def linear(h: Tensor, layer: str) -> Tensor:
            if layer in implicit:
                y = implicit[layer].forward(h, leaves[f"{layer}.bias"])
            elif grouped is not None:
                return grouped(h, leaves[f"{layer}.weight"], leaves[f"{layer}.bias"])
            else:
                y = stacked_linear(h, leaves[f"{layer}.weight"], leaves[f"{layer}.bias"])
            if not y.requires_grad:
                y.requires_grad_(True)
            records[layer] = (h.detach(), y)
            return y

        logits = model.forward_stacked(leaves, x_all[rows], mask, beta=beta, train=True, linear=linear)
        if label_mask is not None:
            logits = logits.masked_fill(~label_mask[:k].unsqueeze(1), float("-inf"))
        per_sample = F.cross_entropy(logits.flatten(0, 1), y_all[rows].flatten(), reduction="none").view(mask.shape)
        per_sample = torch.where(mask, per_sample, torch.zeros((), dtype=per_sample.dtype))
        per_client = per_sample.sum(dim=1) / mask.sum(dim=1).clamp_min(1)
        grads = torch.autograd.grad(per_client.sum(), [records[layer][1] for layer in layers] + [leaves[o] for o in others])
        d_out = dict(zip(layers, grads[: len(layers)]))  # dLoss/dy per linear layer, [k, b, out]
        g_other = dict(zip(others, grads[len(layers):]))
        with torch.no_grad():
            if hp.clip_norm is not None:
                coef = _clip_coefficients(d_out, records, g_other, hp.clip_norm)
                d_out = {layer: d * coef.view(-1, 1, 1) for layer, d in d_out.items()}
                g_other = {name: g * coef.view(-1, *([1] * (g.dim() - 1))) for name, g in g_other.items()}
            for name, g in g_other.items():
                _sgd(leaves[name], g, _buffer(momentum, name, k), hp)
            for layer in layers:
                h, _ = records[layer]
                dy = d_out[layer]
                _sgd(leaves[f"{layer}.bias"], dy.sum(dim=1), _buffer(momentum, f"{layer}.bias", k), hp)
                if layer in implicit:
                    implicit[layer].step(h, dy, hp)
                else:
                    _fused_linear_sgd(leaves[f"{layer}.weight"], dy, h, _buffer(momentum, f"{layer}.weight", k), hp)
        loss_sum[:k] += per_client.detach().to(torch.float64)
    for layer, weight in implicit.items():
        theta[f"{layer}.weight"] = weight.materialize()
    steps_done = _steps_per_client(schedule.active, n).to(device)
    return theta, (loss_sum / steps_done.clamp_min(1)).to(torch.float32)


def _steps_per_client(active: list[int], n: int) -> Tensor:
    counts = torch.zeros(n, dtype=torch.float64)
    for k in active:
        counts[:k] += 1
    return counts


class _GroupedLinear:
    """Stacked linear layers through the Triton grouped GEMM: client i's rows [i*b, (i+1)*b) of
    the packed activations use its own weight matrix (source i, window at 0)."""

    def __init__(self) -> None:
        from ..kernels.grouped_gemm import GroupedProblems, grouped_linear_triton

        self._build, self._run = GroupedProblems.build, grouped_linear_triton
        self._problems: dict[tuple[int, ...], object] = {}  # built once per shape, reused every step

    def __call__(self, h: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        k, b, in_f = h.shape
        out_f = weight.shape[1]
        key = (k, b, out_f, in_f)
        if key not in self._problems:
            self._problems[key] = self._build([b] * k, out_f, in_f)
        return self._run(h.reshape(k * b, in_f), weight, bias, self._problems[key]).view(k, b, out_f)


def _clip_coefficients(d_out: dict[str, Tensor], records: dict[str, tuple[Tensor, Tensor]],
                       g_other: dict[str, Tensor], max_norm: float) -> Tensor:
    """Per client min(1, max_norm / (||grad|| + eps)) as clip_grad_norm_, with the linear weights'
    ||dY^T h||_F^2 = sum((dY dY^T) * (h h^T)) from b x b Gram matrices (no weight-sized tensor)."""
    sq = sum((g.flatten(1).square().sum(dim=1) for g in g_other.values()), torch.zeros((), device=_device(records, g_other)))
    for layer, dy in d_out.items():
        h = records[layer][0]
        sq = sq + (torch.bmm(dy, dy.transpose(1, 2)) * torch.bmm(h, h.transpose(1, 2))).sum(dim=(1, 2))
        sq = sq + dy.sum(dim=1).square().sum(dim=1)
    return (max_norm / (sq.sqrt() + CLIP_EPS)).clamp(max=1.0)


def _device(records: dict, g_other: dict) -> torch.device:
    return next(iter(g_other.values())).device if g_other else next(iter(records.values()))[0].device


def _buffer(momentum: dict[str, Tensor], name: str, k: int) -> Tensor | None:
    """The first k clients' momentum buffer of `name` (None without momentum)."""
    return momentum[name][:k] if name in momentum else None


def _sgd(p: Tensor, grad: Tensor, buf: Tensor | None, hp: LocalTraining) -> None:
    """p -= lr * buf with buf = mu*buf + (grad + wd*p); in place (grad is consumed)."""
    if hp.weight_decay:
        grad.add_(p, alpha=hp.weight_decay)
    if buf is not None:
        buf.mul_(hp.momentum).add_(grad)
        grad = buf
    p.add_(grad, alpha=-hp.lr)


def _fused_linear_sgd(w: Tensor, dy: Tensor, h: Tensor, buf: Tensor | None, hp: LocalTraining) -> None:
    """The SGD step of a linear weight whose gradient is dY^T h, without materializing it."""
    grad_t = dy.transpose(1, 2)
    if buf is not None:
        buf.baddbmm_(grad_t, h, beta=hp.momentum)
        if hp.weight_decay:
            buf.add_(w, alpha=hp.weight_decay)
        w.add_(buf, alpha=-hp.lr)
    else:
        w.baddbmm_(grad_t, h, beta=1.0 - hp.lr * hp.weight_decay, alpha=-hp.lr)
