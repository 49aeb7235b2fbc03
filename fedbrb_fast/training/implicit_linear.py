"""A linear layer's weight kept implicitly during local training, as its start plus low-rank terms.

A linear weight's gradient at step j is G_j = dY_j^T h_j, of rank <= batch size. SGD with momentum
and weight decay is linear in (w, buf) with scalar coefficients, so after s steps

    w_s   = a_s * w0 + sum_j gamma_{s,j} G_j
    buf_s = c_s * w0 + sum_j delta_{s,j} G_j

with per-client scalars a, c, gamma, delta. The forward pass needs only
h w_s^T = a (h w0^T) + sum_j gamma_j (h h_j^T) dY_j: one read of w0 and small Gram products, so
neither the weight nor the momentum buffer is written during the round; the weight is built
once at the end with a single batched GEMM. When clients train few steps (rank s*b well below the
layer's sizes) this moves far less memory than updating w and buf every step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..models.factored import FactoredStack
from ..models.slice_runs import few_runs, slice_runs
from ..models.stacked import SliceSet
from .local import LocalTraining


def use_implicit(out_features: int, in_features: int, steps: int, batch_size: int, *, shared: bool = False) -> bool:
    """Worth it while the recorded rank (one row per sample of every step) stays within half the
    smaller side of the weight, or within all of it when clients share their starting slices (the
    start product is then a tall GEMM: FedRolex 100 clients 784-[128,128] 2 epochs of batch 10, 10%
    less CPU time in training; with per-client slices, as FedBRB's K^2 tiles, 12% more)."""
    return (1 if shared else 2) * steps * batch_size <= min(out_features, in_features)


def shares_slices(w0: SliceSet) -> bool:
    """Clients share their starting slices in few enough runs for one GEMM per run."""
    return few_runs(slice_runs(w0.of_client), len(w0.of_client))


class ImplicitLinearWeight:
    def __init__(self, w0: SliceSet, steps: int, batch_size: int) -> None:
        """`w0`: the clients' starting weights [n, out, in] as distinct slices. Clients sharing a
        slice compute against it in one tall GEMM (runs of consecutive clients); with many
        distinct slices, against per-client copies in one batched GEMM."""
        n, out_f, in_f = len(w0.of_client), w0.unique.shape[1], w0.unique.shape[2]
        self.w0, self.b = w0, batch_size
        self.runs = slice_runs(w0.of_client)
        self.w0_stacked = None if few_runs(self.runs, n) else w0.stacked()
        dev, dtype = w0.unique.device, w0.unique.dtype
        self.a = torch.ones(n, dtype=torch.float64, device=dev)
        self.c = torch.zeros(n, dtype=torch.float64, device=dev)
        self.gamma = torch.zeros(n, steps, dtype=torch.float64, device=dev)
        self.delta = torch.zeros(n, steps, dtype=torch.float64, device=dev)
        self.dys = torch.zeros(n, steps * batch_size, out_f, dtype=dtype, device=dev)
        self.hs = torch.zeros(n, steps * batch_size, in_f, dtype=dtype, device=dev)
        self.steps = 0

    def forward(self, h: Tensor, bias: Tensor) -> Tensor:
        """y = h w_s^T + bias for the first k = len(h) clients (differentiable in h)."""
        k = h.shape[0]
        y = torch.addcmul(bias.unsqueeze(1), self._start_product(h), self.a[:k].to(h.dtype).view(k, 1, 1))
        if self.steps:
            r = self.steps * self.b
            # sum_j gamma_j (h h_j^T) dY_j: the step coefficients scale the small Gram, not dY.
            gram = torch.bmm(h, self.hs[:k, :r].transpose(1, 2)) * self._per_row(self.gamma[:k, : self.steps], h.dtype)
            y = torch.baddbmm(y, gram, self.dys[:k, :r])
        return y

    def _start_product(self, h: Tensor) -> Tensor:
        """h_i w0_i^T for the first k clients: one GEMM per run of clients sharing a slice."""
        k = h.shape[0]
        if self.w0_stacked is not None:
            return torch.bmm(h, self.w0_stacked[:k].transpose(1, 2))
        parts = [torch.matmul(h[start:stop], self.w0.unique[int(self.w0.of_client[start])].t())
                 for start, stop in ((a, min(b, k)) for a, b in self.runs if a < k)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def step(self, h: Tensor, dy: Tensor, hp: LocalTraining) -> None:
        """Record G_s = dY^T h for the first k = len(h) clients (dY already clipped) and advance
        (w, buf) by one SGD step."""
        k, s, b = h.shape[0], self.steps, self.b
        self.hs[:k, s * b:(s + 1) * b] = h
        self.dys[:k, s * b:(s + 1) * b] = dy
        a, c = self.a[:k], self.c[:k]
        gamma, delta = self.gamma[:k, : s + 1], self.delta[:k, : s + 1]
        # buf <- mu*buf + G + wd*w ; w <- w - lr*buf   (torch.optim.SGD, fresh state: buf starts at 0)
        c.mul_(hp.momentum).add_(a, alpha=hp.weight_decay)
        delta.mul_(hp.momentum).add_(gamma, alpha=hp.weight_decay)
        delta[:, s] = 1.0
        a.sub_(c, alpha=hp.lr)
        gamma.sub_(delta, alpha=hp.lr)
        self.steps += 1

    def factored(self) -> FactoredStack:
        """The trained weights as factors, a * w0 + (gamma dY)^T H, never written out."""
        r = self.steps * self.b
        left = self.dys[:, :r] * self._per_row(self.gamma[:, : self.steps], self.dys.dtype).transpose(1, 2)
        return FactoredStack(self.w0.unique, self.w0.of_client, self.a.to(self.dys.dtype), left, self.hs[:, :r])

    def materialize(self) -> Tensor:
        """The trained weights [n, out, in] (a fresh tensor)."""
        return self.factored().dense()

    def _per_row(self, coef: Tensor, dtype: torch.dtype) -> Tensor:
        """[k, steps] step coefficients -> [k, 1, steps*b], one per recorded row."""
        return coef.to(dtype).repeat_interleave(self.b, dim=1).unsqueeze(1)
