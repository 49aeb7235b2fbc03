"""What a model family gives the engines (docs/adding_a_model.md): a layout whose specs carry their
roles, a seeded init and a functional forward; optionally a hand-written forward over stacked
clients for the batched engine (without one, it vmaps the functional forward)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from .layout import ModelLayout
from .stacked import LinearLayer, StackedLinear


class ModelFamily(Protocol):
    """One global model of a family. `forward(params, x, beta=, train=, mask=)` maps a batch x
    [b, *input] to logits [b, classes] with params by layout name (any width: a client's
    sub-model or the global model); `mask` [b] bool marks the real samples of a padded batch,
    which alone enter batch statistics. `batch_coupled`: a sample's output depends on the rest
    of its batch (static BatchNorm), so evaluation batches are part of the protocol."""

    arch: str
    layout: ModelLayout

    @property
    def batch_coupled(self) -> bool: ...

    def init(self, generator: torch.Generator) -> dict[str, Tensor]: ...

    def forward(self, params: Mapping[str, Tensor], x: Tensor, *, beta: float = 1.0, train: bool = False,
                mask: Tensor | None = None) -> Tensor: ...

    def flops_per_sample(self, widths: Sequence[int], input_shape: tuple[int, ...]) -> int:
        """Multiply-adds x2 of one forward pass with the groups at `widths` channels."""
        ...


@runtime_checkable
class StackedFamily(ModelFamily, Protocol):
    """A family with a hand-written forward over stacked clients: params [n, ...], x [n, b, *input],
    mask [n, b] -> logits [n, b, classes]. Every layer named in `stacked_linears` runs through
    `linear(h, name)` (the batched trainer fuses their weight updates); `input_layer`, if set,
    is the one of them that alone reads x (the trainer may compute it from its own copy of x)."""

    stacked_linears: Mapping[str, LinearLayer]
    input_layer: str | None

    def forward_stacked(self, params: Mapping[str, Tensor], x: Tensor, mask: Tensor, *, beta: float = 1.0,
                        train: bool = False, linear: StackedLinear | None = None) -> Tensor: ...


def stacked_forward_of(model: ModelFamily) -> StackedFamily | None:
    """The model's hand-written stacked forward, if its family has one."""
    return model if isinstance(model, StackedFamily) else None


@dataclass(frozen=True)
class ReluChain:
    """A model that is linear layers in order with ReLU between them and no norm (HeteroFL's scaler
    after each hidden layer when `scaler`): what client-major CPU training compiles."""

    layers: tuple[LinearLayer, ...]
    scaler: bool


@runtime_checkable
class ReluChainFamily(Protocol):
    def relu_chain(self) -> ReluChain | None:
        """The model as a ReLU chain, or None when it is not one (e.g. it has a norm)."""
        ...


def relu_chain_of(model: ModelFamily) -> ReluChain | None:
    return model.relu_chain() if isinstance(model, ReluChainFamily) else None


def vmapped_forward(model: ModelFamily, params: Mapping[str, Tensor], x: Tensor, mask: Tensor, *, beta: float = 1.0,
                    train: bool = False) -> Tensor:
    """Any family over stacked clients: the functional forward vmapped over the client axis of
    params [n, ...], x [n, b, *input] and mask [n, b] -> logits [n, b, classes]. Padded samples
    stay out of batch statistics through the mask; the caller leaves them out of the loss."""

    def one_client(p: dict[str, Tensor], xi: Tensor, mi: Tensor) -> Tensor:
        return model.forward(p, xi, beta=beta, train=train, mask=mi)

    out: Tensor = torch.func.vmap(one_client)(dict(params), x, mask)
    return out


class FunctionalView:
    """A model seen through its functional forward alone (no hand-written stacked forward), so the
    batched engine takes its generic vmapped path: what benchmarks and tests compare it with."""

    def __init__(self, model: ModelFamily) -> None:
        self.model = model
        self.arch, self.layout = model.arch, model.layout

    @property
    def batch_coupled(self) -> bool:
        return self.model.batch_coupled

    def init(self, generator: torch.Generator) -> dict[str, Tensor]:
        return self.model.init(generator)

    def forward(self, params: Mapping[str, Tensor], x: Tensor, *, beta: float = 1.0, train: bool = False,
                mask: Tensor | None = None) -> Tensor:
        return self.model.forward(params, x, beta=beta, train=train, mask=mask)

    def flops_per_sample(self, widths: Sequence[int], input_shape: tuple[int, ...]) -> int:
        return self.model.flops_per_sample(widths, input_shape)
