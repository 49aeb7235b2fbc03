"""Client faults: simulated dropout and corruption, and screening of absurd updates.

Injection is seeded per round (`STREAM_FAULTS`), so a faulty run is as reproducible as a clean
one. Whatever a client sends, only finite updates within the norm bound reach aggregation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .aggregation import ClientBatch, ClientUpdate, FactoredStack
from .models.factored import as_dense
from .models.layout import ModelLayout, gather_tensor
from .models.stacked import gather_stacked
from .seeding import STREAM_FAULTS, numpy_generator

CORRUPTIONS = ("nan", "inf", "huge")


@dataclass(frozen=True)
class FaultEvent:
    round: int  # rounds completed when it happened (1-based, like the metrics)
    client: int | None
    kind: str  # dropout | corrupted | excluded | no_updates
    detail: str

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def pick_clients(clients: Sequence[int], rate: float, seed: int, round_idx: int, salt: int) -> set[int]:
    """Each client independently with probability `rate`, from the round's fault generator."""
    if rate <= 0:
        return set()
    draws = numpy_generator(seed, STREAM_FAULTS, round_idx, salt).random(len(clients))
    return {c for c, d in zip(sorted(clients), draws, strict=True) if d < rate}


def corrupt(updates: Sequence[ClientUpdate | ClientBatch], clients: set[int], kind: str) -> None:
    """Overwrite the chosen clients' first tensor (in place) as a faulty client would send it."""
    if kind not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {kind!r}; expected one of {CORRUPTIONS}")
    for item in updates:
        rows = [i for i, c in enumerate(_clients(item)) if c in clients]
        if not rows:
            continue
        name = next(iter(item.params))
        target = item.params[name] if isinstance(item, ClientBatch) else item.params[name].unsqueeze(0)
        for i in rows:
            if isinstance(target, FactoredStack):
                if kind == "huge":
                    target.scale_client_(i, 1e8)
                else:
                    target.poison_client_(i, float("nan") if kind == "nan" else float("inf"))
            elif kind == "huge":
                target[i].mul_(1e8)
            else:
                target[i].view(-1)[0] = float("nan") if kind == "nan" else float("inf")


def update_norms(global_params: Mapping[str, Tensor], layout: ModelLayout,
                 updates: Sequence[ClientUpdate | ClientBatch]) -> dict[int, float]:
    """||theta_i - theta_i^0|| over all tensors, per client."""
    norms: dict[int, float] = {}
    for item in updates:
        if isinstance(item, ClientBatch):
            sq = torch.zeros(len(item), dtype=torch.float64)
            for spec in layout.params:
                diff = as_dense(item.params[spec.name]) - gather_stacked(global_params[spec.name], spec, item.indices)
                sq += diff.flatten(1).to(torch.float64).square().sum(dim=1)
            norms.update(zip(item.clients, sq.sqrt().tolist(), strict=True))
        else:
            total = sum(float((item.params[s.name] - gather_tensor(global_params[s.name], s, item.indices))
                              .to(torch.float64).square().sum()) for s in layout.params)
            norms[item.client] = math.sqrt(total)
    return norms


def without_clients(updates: Sequence[ClientUpdate | ClientBatch], drop: set[int]) -> list[ClientUpdate | ClientBatch]:
    """The updates minus the dropped clients (stacked batches keep their other rows)."""
    out: list[ClientUpdate | ClientBatch] = []
    for item in updates:
        if isinstance(item, ClientUpdate):
            if item.client not in drop:
                out.append(item)
            continue
        keep = [i for i, c in enumerate(item.clients) if c not in drop]
        if len(keep) == len(item):
            out.append(item)
        elif keep:
            ix = torch.tensor(keep)
            out.append(ClientBatch(tuple(item.clients[i] for i in keep), item.weights[ix],
                                   tuple(t[ix] for t in item.indices), {k: v[ix] for k, v in item.params.items()},
                                   {k: v[ix] for k, v in item.masks.items()}))
    return out


def _clients(item: ClientUpdate | ClientBatch) -> tuple[int, ...]:
    return item.clients if isinstance(item, ClientBatch) else (item.client,)
