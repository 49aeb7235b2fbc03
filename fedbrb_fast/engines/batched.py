"""The batched engine: a round's clients grouped by width and trained together as stacked
tensors (batched GEMMs for linear layers, grouped convolutions for conv layers).

Same inputs and randomness as the reference engine; memory is bounded by training at most
`max_clients_per_step` clients at once.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import Tensor

from ..aggregation import ClientBatch
from ..models.stacked import DistinctSlices, gather_slices
from ..plans import ClientPlan
from ..profiling import PhaseTimer
from ..training.batched import build_schedule, local_steps, train_stacked
from ..training.client_major import client_major_available
from .base import Engine
from .context import RoundContext, TrainedRound

CPU_TRAINERS = ("auto", "stacked")


def width_chunks(plans: Sequence[ClientPlan], max_clients: int, steps: Mapping[int, int]) -> list[list[ClientPlan]]:
    """Plans grouped by width (equal sub-model shapes), ordered by decreasing local step count
    `steps[client]` (so a chunk's clients idle from the end), then by where their channels start
    (clients cutting the same slices sit side by side), each group cut into chunks."""
    by_width: dict[tuple[int, ...], list[ClientPlan]] = {}
    for p in sorted(plans, key=lambda p: (-steps[p.client], tuple(int(ix[0]) if len(ix) else -1 for ix in p.indices),
                                          p.client)):
        by_width.setdefault(tuple(len(ix) for ix in p.indices), []).append(p)
    return [group[i:i + max_clients] for group in by_width.values() for i in range(0, len(group), max_clients)]


def resolve_device(requested: str) -> torch.device:
    """The requested device, or the CPU with a warning when CUDA is not available."""
    if requested == "cuda" and not torch.cuda.is_available():
        warnings.warn("train.device = 'cuda' but no CUDA device is available; training on the CPU",
                      RuntimeWarning, stacklevel=2)
        return torch.device("cpu")
    return torch.device(requested)


def resolve_linear_backend(requested: str, device: torch.device) -> str:
    """'triton' where the kernels can run (CUDA, or the interpreter under TRITON_INTERPRET=1),
    else 'torch' with a warning that says so."""
    if requested != "triton":
        return "torch"
    from ..kernels.grouped_gemm_kernels import INTERPRETED

    if device.type == "cuda" or INTERPRETED:
        return "triton"
    warnings.warn("train.linear_backend = 'triton' needs a CUDA device (or TRITON_INTERPRET=1 to interpret the "
                  "kernels on the CPU); the batched engine uses its torch path", RuntimeWarning, stacklevel=2)
    return "torch"


def resolve_cpu_trainer(requested: str, device: torch.device) -> bool:
    """Whether ReLU chains train client-major (`training/client_major.py`): 'auto' on the CPU when
    numba is installed; 'stacked' never."""
    if requested not in CPU_TRAINERS:
        raise ValueError(f"cpu_trainer must be one of {CPU_TRAINERS}, got {requested!r}")
    return requested == "auto" and device.type == "cpu" and client_major_available()


class BatchedEngine(Engine):
    name = "batched"

    def __init__(self, max_clients_per_step: int = 256, *, linear_backend: str = "torch", device: str = "cpu",
                 cpu_trainer: str = "auto") -> None:
        if max_clients_per_step < 1:
            raise ValueError(f"max_clients_per_step must be >= 1, got {max_clients_per_step}")
        self.max_clients_per_step = max_clients_per_step
        self.device = resolve_device(device)
        self.linear_backend = resolve_linear_backend(linear_backend, self.device)
        self.client_major = resolve_cpu_trainer(cpu_trainer, self.device)
        self._data_on_device: tuple[int, Tensor, Tensor] | None = None

    def _device_data(self, ctx: RoundContext) -> tuple[Tensor, Tensor]:
        """The training tensors on the engine's device, copied once per dataset."""
        if self._data_on_device is None or self._data_on_device[0] != id(ctx.data):
            self._data_on_device = (id(ctx.data), ctx.data.x_train.to(self.device), ctx.data.y_train.to(self.device))
        return self._data_on_device[1], self._data_on_device[2]

    def train_round(self, ctx: RoundContext, plans: Sequence[ClientPlan], global_params: Mapping[str, Tensor],
                    timer: PhaseTimer) -> TrainedRound:
        pieces = list(self.train_pieces(ctx, plans, global_params, timer))
        return TrainedRound(updates=[u for p in pieces for u in p.updates],
                            train_losses={c: v for p in pieces for c, v in p.train_losses.items()})

    def train_pieces(self, ctx: RoundContext, plans: Sequence[ClientPlan], global_params: Mapping[str, Tensor],
                     timer: PhaseTimer) -> Iterator[TrainedRound]:
        """One piece per chunk of at most `max_clients_per_step` clients, trained when asked for."""
        steps = {p.client: local_steps(ctx.data.num_samples(p.client), ctx.local.batch_size, ctx.local.epochs)
                 for p in plans}
        for chunk in width_chunks(plans, self.max_clients_per_step, steps):
            # Nothing of a chunk stays referenced here once it is handed over, so the consumer holds
            # the only copy while the next chunk trains.
            yield self._train_chunk(ctx, chunk, global_params, timer)

    def _train_chunk(self, ctx: RoundContext, chunk: Sequence[ClientPlan], global_params: Mapping[str, Tensor],
                     timer: PhaseTimer) -> TrainedRound:
        clients = tuple(p.client for p in chunk)
        with timer.phase("gather"):
            indices = tuple(torch.stack([p.indices[g] for p in chunk]) for g in range(len(chunk[0].indices)))
            distinct: DistinctSlices = {}
            slices = {s.name: gather_slices(global_params[s.name], s, indices, distinct).to(self.device)
                      for s in ctx.model.layout.params}
            schedule = build_schedule([ctx.data.client_indices[c] for c in clients], ctx.local.batch_size,
                                      ctx.local.epochs, ctx.seed, ctx.round_idx, clients)
            label_mask = (torch.stack([ctx.classes_present(c) for c in clients]).to(self.device)
                          if ctx.label_masking else None)
            x_all, y_all = self._device_data(ctx)
        with timer.phase("train"):
            trained, mean_loss = train_stacked(ctx.model, slices, x_all, y_all, schedule, beta=chunk[0].width,
                                               hp=ctx.local, label_mask=label_mask, linear_backend=self.linear_backend,
                                               factored=True, client_major=self.client_major)
            trained = {k: v.cpu() for k, v in trained.items()}  # aggregation reads host tensors
        batch = ClientBatch(
            clients=clients,
            weights=torch.tensor([ctx.client_weight(c) for c in clients], dtype=torch.float64),
            indices=indices,
            params=trained,
            masks=_stack_masks([ctx.aggregation_masks(c) for c in clients]),
        )
        return TrainedRound(updates=[batch], train_losses=dict(zip(clients, mean_loss.tolist(), strict=True)))


def _stack_masks(masks: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    return {k: torch.stack([m[k] for m in masks]) for k in masks[0]} if masks and masks[0] else {}
