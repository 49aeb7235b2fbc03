"""Client-major local training of ReLU chains on the CPU: each client's whole round in one compiled
loop nest (`relu_chain_kernel.py`), the clients spread over the cores by numba.

`train_stacked` hands a chunk here when the family is a ReLU chain (`ReluChainFamily`: the MLP
without a norm), the device is the CPU and numba is installed; the result is the same as its own
step-major path (same minibatches, same SGD), computed with every client's state resident in L2.
The input layer keeps its data-span form: P and K come from the caller's `DataSpanLinearWeight`
(tall GEMMs, computed once), and the kernel advances its factors.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from ..models.factored import FactoredStack
from ..models.family import ReluChain
from ..models.stacked import SliceSet
from ..optional import available, require
from .data_span_linear import DataSpanLinearWeight
from .local import LocalTraining


def client_major_available() -> bool:
    """numba compiles the kernel; its np.dot calls scipy's BLAS."""
    return available("numba") and available("scipy")


def train_client_major(chain: ReluChain, params: Mapping[str, Tensor | SliceSet], x_all: Tensor, y_all: Tensor, *,
                       rows: Tensor, positions: Tensor, mask: Tensor, steps: Tensor, beta: float,
                       hp: LocalTraining, label_mask: Tensor | None, span: DataSpanLinearWeight | None,
                       factored: bool) -> tuple[dict[str, Tensor | FactoredStack], Tensor]:
    """`train_stacked` for a ReLU chain on the CPU: params [n, ...] by name (the input layer's
    weight unused when `span` holds it in data-span form), the step table rows / positions / mask
    [S, n, b] and each client's number of local steps [n]. Returns (trained params, mean loss per client)."""
    numba = require("numba", "client-major training")
    from .relu_chain_kernel import train_relu_chain  # compiles on first use

    layers = chain.layers
    explicit = [(layer.weight, True) for layer in layers[:1] if span is None]
    explicit += [(layer.bias, False) for layer in layers[:1]]
    explicit += [(name, is_weight) for layer in layers[1:] for name, is_weight in ((layer.weight, True),
                                                                                   (layer.bias, False))]
    tensors = {name: _stacked(params[name]) for name, _ in explicit}
    n = next(iter(tensors.values())).shape[0]
    dtype = next(iter(tensors.values())).dtype
    sizes = [t[0].numel() for t in tensors.values()]
    offsets = dict(zip(tensors, np.cumsum([0, *sizes[:-1]]).tolist(), strict=True))
    theta = torch.cat([t.reshape(n, -1) for t in tensors.values()], dim=1).contiguous()
    outs = np.array([tensors[layer.bias].shape[1] for layer in layers], np.int64)
    ins = np.array([_in_features(layer_index, layers, tensors, x_all, span) for layer_index in range(len(layers))],
                   np.int64)
    w_off = np.array([offsets.get(layer.weight, 0) for layer in layers], np.int64)
    b_off = np.array([offsets[layer.bias] for layer in layers], np.int64)
    if span is not None:
        p, gram, e_w, e_v, a, c = span.p, span.gram, span.e_w, span.e_v, span.a, span.c
    else:
        p = gram = e_w = e_v = torch.zeros(n, 0, 0, dtype=dtype)
        a = c = torch.zeros(n, dtype=torch.float64)
    ok = label_mask if label_mask is not None else torch.ones(n, outs[-1], dtype=torch.bool)
    hp_t = torch.tensor([hp.lr, hp.momentum, hp.weight_decay, beta], dtype=dtype)
    hp64 = torch.tensor([hp.lr, hp.momentum, hp.weight_decay, beta], dtype=torch.float64)
    loss_sum = torch.zeros(n, dtype=torch.float64)
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    train_relu_chain(theta.numpy(), outs, ins, w_off, b_off, x_all.reshape(len(x_all), -1).numpy(), y_all.numpy(),
                rows.numpy(), positions.numpy(), mask.numpy(), steps.numpy(), ok.numpy(), span is not None,
                p.numpy(), gram.numpy(), e_w.numpy(), e_v.numpy(), a.numpy(), c.numpy(), hp_t.numpy(), hp64.numpy(),
                0.0 if hp.clip_norm is None else float(hp.clip_norm), chain.scaler and beta != 1.0, loss_sum.numpy())
    trained: dict[str, Tensor | FactoredStack] = {
        name: theta[:, offsets[name]:offsets[name] + t[0].numel()].reshape(t.shape).contiguous()
        for name, t in tensors.items()}
    if span is not None:
        trained[layers[0].weight] = span.factored() if factored else span.materialize()
    return {name: trained[name] for name in params}, (loss_sum / steps.clamp_min(1)).to(torch.float32)


def _stacked(t: Tensor | SliceSet) -> Tensor:
    return (t.stacked() if isinstance(t, SliceSet) else t).detach().contiguous()


def _in_features(index: int, layers: tuple, tensors: Mapping[str, Tensor], x_all: Tensor,
                 span: DataSpanLinearWeight | None) -> int:
    if index > 0:
        return int(tensors[layers[index - 1].bias].shape[1])
    return int(x_all[0].numel()) if span is None else 0
