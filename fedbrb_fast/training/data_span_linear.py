"""The input layer's weight kept in the span of the client's own samples during local training.

A linear layer fed by the raw inputs has the weight gradient G_j = dY_j^T X[rows_j] at step j: its
rows lie in the span of the client's m samples X_c [m, in]. SGD with momentum and weight decay is
linear in (w, buf) with scalar coefficients, so after any number of steps

    w   = a * w0 + E_w^T X_c
    buf = c * w0 + E_v^T X_c

with per-client scalars a, c and E_w, E_v [m, out], one row per sample whichever epochs and steps
saw it. The forward pass is x w^T = a (x w0^T) + (x X_c^T) E_w, whose factors are rows of
P = X_c w0^T [m, out] and K = X_c X_c^T [m, m], both computed once per round; a step updates two
m x out matrices. With m well below the input width (MNIST-5k clients: 40 samples of 784 pixels)
a round does less arithmetic than dense updates (each sample meets w0 once, not once per epoch),
in larger GEMMs (P of all clients that share a slice of w0 is one tall GEMM), and writes no
weight-sized tensor until the trained weight is built, once, at the end.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..models.factored import FactoredStack
from ..models.slice_runs import few_runs, slice_runs
from ..models.stacked import SliceSet
from .local import LocalTraining


def use_data_span(in_features: int, samples: int) -> bool:
    """Worth it while a client's samples span at most half the input space."""
    return 2 * samples <= in_features


class DataSpanLinearWeight:
    def __init__(self, w0: SliceSet, samples: Tensor) -> None:
        """`w0`: the clients' starting weights [n, out, in] as distinct slices; `samples` X_c
        [n, m, in], zero rows past a client's own samples."""
        n, m, _ = samples.shape
        self.w0, self.samples = w0, samples
        self.p = _input_products(samples, w0)
        self.gram = torch.bmm(samples, samples.transpose(1, 2))
        dev, out_f = samples.device, self.p.shape[2]
        self.a = torch.ones(n, dtype=torch.float64, device=dev)
        self.c = torch.zeros(n, dtype=torch.float64, device=dev)
        self.e_w = torch.zeros(n, m, out_f, dtype=samples.dtype, device=dev)
        self.e_v = torch.zeros_like(self.e_w)
        self.stepped = False

    def forward(self, pos: Tensor, bias: Tensor) -> Tensor:
        """y = x w^T + bias for the first k clients' samples at positions `pos` [k, b] of X_c."""
        k, b = pos.shape
        rows = pos.unsqueeze(2)
        y = torch.addcmul(bias.unsqueeze(1), self.p[:k].gather(1, rows.expand(k, b, self.p.shape[2])),
                          self.a[:k].to(self.p.dtype).view(k, 1, 1))
        if self.stepped:
            y = y.baddbmm(self.gram[:k].gather(1, rows.expand(k, b, self.gram.shape[2])), self.e_w[:k])
        return y

    def grad_sq_norm(self, pos: Tensor, dy: Tensor) -> Tensor:
        """||dY^T X_b||_F^2 per client = sum((dY dY^T) * (X_b X_b^T)), X_b X_b^T read from K."""
        k, b = pos.shape
        gram_rows = self.gram[:k].gather(1, pos.unsqueeze(2).expand(k, b, self.gram.shape[2]))
        gram_b = gram_rows.gather(2, pos.unsqueeze(1).expand(k, b, b))
        return (torch.bmm(dy, dy.transpose(1, 2)) * gram_b).sum(dim=(1, 2))

    def step(self, pos: Tensor, dy: Tensor, hp: LocalTraining) -> None:
        """One SGD step of the first k clients: dY [k, b, out] (already clipped) at positions `pos`.
        Padded samples have dY = 0, so their positions add nothing."""
        k = pos.shape[0]
        a, c, e_w, e_v = self.a[:k], self.c[:k], self.e_w[:k], self.e_v[:k]
        # buf <- mu*buf + G + wd*w ; w <- w - lr*buf   (torch.optim.SGD, fresh state: buf starts at 0)
        c.mul_(hp.momentum).add_(a, alpha=hp.weight_decay)
        a.sub_(c, alpha=hp.lr)
        if hp.momentum:
            e_v.mul_(hp.momentum)
        else:
            e_v.zero_()
        if hp.weight_decay:
            e_v.add_(e_w, alpha=hp.weight_decay)
        e_v.scatter_add_(1, pos.unsqueeze(2).expand_as(dy), dy)
        e_w.add_(e_v, alpha=-hp.lr)
        self.stepped = True

    def factored(self) -> FactoredStack:
        """The trained weights as factors: a * w0 + E_w^T X_c, never written out."""
        return FactoredStack(self.w0.unique, self.w0.of_client, self.a.to(self.samples.dtype), self.e_w, self.samples)

    def materialize(self) -> Tensor:
        """The trained weights [n, out, in] (a fresh tensor). Consecutive clients with the same
        slice and coefficient a (same step count) take one batched GEMM whose input is the shared
        slice itself, so no per-client copy of w0 is written first."""
        e_t = self.e_w.transpose(1, 2)
        runs = slice_runs(self.w0.of_client, self.a)
        if not few_runs(runs, len(self.a)):
            w = self.w0.stacked()
            w.mul_(self.a.to(w.dtype).view(-1, 1, 1))
            return w.baddbmm_(e_t, self.samples)
        w = self.samples.new_empty(len(self.a), *self.w0.unique.shape[1:])
        for start, stop in runs:
            shared = self.w0.unique[self.w0.of_client[start]].expand(stop - start, -1, -1)
            torch.baddbmm(shared, e_t[start:stop], self.samples[start:stop], beta=float(self.a[start]),
                          out=w[start:stop])
        return w


def _input_products(samples: Tensor, w0: SliceSet) -> Tensor:
    """P = X_c w0^T [n, m, out]: one tall GEMM per run of clients that share a slice, or one
    batched GEMM when slices are not shared."""
    n, m, in_f = samples.shape
    runs = slice_runs(w0.of_client)
    if not few_runs(runs, n):
        return torch.bmm(samples, w0.stacked().transpose(1, 2))
    p = samples.new_empty(n, m, w0.unique.shape[1])
    for start, stop in runs:
        torch.mm(samples[start:stop].view(-1, in_f), w0.unique[w0.of_client[start]].t(),
                 out=p[start:stop].view(-1, p.shape[2]))
    return p
