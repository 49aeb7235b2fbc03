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

from .local import LocalTraining


def use_implicit(out_features: int, in_features: int, steps: int, batch_size: int) -> bool:
    """Worth it while the accumulated rank stays at most half the smaller side of the weight."""
    return 2 * steps * batch_size <= min(out_features, in_features)


class ImplicitLinearWeight:
    def __init__(self, w0: Tensor, steps: int, batch_size: int) -> None:
        n, out_f, in_f = w0.shape
        self.w0, self.b = w0, batch_size
        dev = w0.device
        self.a = torch.ones(n, dtype=torch.float64, device=dev)
        self.c = torch.zeros(n, dtype=torch.float64, device=dev)
        self.gamma = torch.zeros(n, steps, dtype=torch.float64, device=dev)
        self.delta = torch.zeros(n, steps, dtype=torch.float64, device=dev)
        self.dys = torch.zeros(n, steps * batch_size, out_f, dtype=w0.dtype, device=dev)
        self.hs = torch.zeros(n, steps * batch_size, in_f, dtype=w0.dtype, device=dev)
        self.steps = 0

    def forward(self, h: Tensor, bias: Tensor) -> Tensor:
        """y = h w_s^T + bias for the first k = len(h) clients (differentiable in h)."""
        k = h.shape[0]
        y = torch.bmm(h, self.w0[:k].transpose(1, 2)) * self.a[:k].to(h.dtype).view(k, 1, 1) + bias.unsqueeze(1)
        if self.steps:
            r = self.steps * self.b
            scaled = self.dys[:k, :r] * self._per_row(self.gamma[:k, : self.steps], h.dtype)
            y = y + torch.bmm(torch.bmm(h, self.hs[:k, :r].transpose(1, 2)), scaled)
        return y

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

    def materialize(self) -> Tensor:
        """The trained weights [n, out, in], written over w0."""
        n = self.w0.shape[0]
        w = self.w0.mul_(self.a.to(self.w0.dtype).view(n, 1, 1))
        if self.steps:
            r = self.steps * self.b
            scaled = self.dys[:, :r] * self._per_row(self.gamma[:, : self.steps], w.dtype)
            w.baddbmm_(scaled.transpose(1, 2), self.hs[:, :r])
        return w

    def _per_row(self, coef: Tensor, dtype: torch.dtype) -> Tensor:
        """[k, steps] step coefficients -> [k, steps*b, 1], one per recorded row."""
        return coef.to(dtype).repeat_interleave(self.b, dim=1).unsqueeze(2)
