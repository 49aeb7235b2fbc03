"""Small aggregation rounds for the backend tests: real plans of every method on MLP, CNN,
PreResNet-18, the Transformer (heads as segments) and a layout with a segmented group
(tests/segmented_family.py; FedBRB with the layout's shear), mixed widths, optional label masks and
zero weights."""

from __future__ import annotations

import torch
from segmented_family import SegmentedNet

from fedbrb_fast.aggregation import ClientBatch, ClientUpdate
from fedbrb_fast.models import CNN, MLP, PreResNet, Transformer, extract
from fedbrb_fast.plans import make_round_plans, shear_coefficients

WIDTHS = (0.25, 0.5, 0.25, 0.75, 0.25, 0.5, 0.25, 1.0, 0.25)
NUM_BLOCKS = 4


def model(arch: str):
    if arch == "preresnet18":
        return PreResNet(2, [4, 8, 8, 4], 5, norm="bn")
    if arch == "segmented":
        return SegmentedNet(6, 5)
    if arch == "transformer":  # two heads of four channels: one block of each per head at K = 4
        return Transformer(5, context=4, dim=8, heads=2, mlp=8, layers=1)
    return MLP(6, [8, 12], 5, norm="bn") if arch == "mlp" else CNN(2, [4, 8], 5, norm="bn")


def make_round(arch: str, method: str, *, seed: int = 0, label_mask: bool = False, zero_weight: bool = False,
               widths=WIDTHS, round_idx: int = 3):
    """(layout, global params, updates): each client's theta is its extracted sub-model plus noise."""
    layout = model(arch).layout
    g = torch.Generator().manual_seed(seed)
    params = {s.name: torch.randn(s.shape, generator=g) for s in layout.params}
    clients = list(range(10, 10 + len(widths)))
    plans = make_round_plans(method, round_idx, clients, list(widths), group_sizes=layout.group_sizes,
                             num_blocks=NUM_BLOCKS, seed=seed, shear=shear_coefficients(layout),
                             group_segments=layout.group_segments)
    classes = layout.num_classes
    updates = []
    for j, plan in enumerate(plans):
        sub = extract(params, layout, plan.indices)
        masks = {}
        if label_mask:
            rows = (torch.rand(classes, generator=g) > 0.4).float()
            masks = {name: rows.view(-1, *([1] * (len(layout.spec(name).shape) - 1))) for name in layout.classifier}
        weight = 0.0 if zero_weight and j == 1 else float(torch.randint(1, 50, (1,), generator=g))
        updates.append(ClientUpdate(plan.client, weight, plan.indices,
                                    {n: t + 0.1 * torch.randn(t.shape, generator=g) for n, t in sub.items()}, masks))
    return layout, params, updates


def to_device(params: dict[str, torch.Tensor], updates: list[ClientUpdate], device: torch.device | str):
    """The round's global params and updates moved to `device`."""
    moved = [ClientUpdate(u.client, u.weight, tuple(i.to(device) for i in u.indices),
                          {k: v.to(device) for k, v in u.params.items()}, {k: v.to(device) for k, v in u.masks.items()})
             for u in updates]
    return {k: v.to(device) for k, v in params.items()}, moved


def batched(updates: list[ClientUpdate]) -> list[ClientBatch | ClientUpdate]:
    """Updates of equal sub-model shape stacked into ClientBatches (single ones stay single)."""
    groups: dict[tuple, list[ClientUpdate]] = {}
    for u in updates:
        groups.setdefault(tuple(len(ix) for ix in u.indices), []).append(u)
    out: list[ClientBatch | ClientUpdate] = []
    for group in groups.values():
        if len(group) == 1:
            out.append(group[0])
            continue
        out.append(ClientBatch(
            clients=tuple(u.client for u in group),
            weights=torch.tensor([u.weight for u in group], dtype=torch.float64),
            indices=tuple(torch.stack([u.indices[g] for u in group]) for g in range(len(group[0].indices))),
            params={n: torch.stack([u.params[n] for u in group]) for n in group[0].params},
            masks={n: torch.stack([u.masks[n] for u in group]) for n in group[0].masks},
        ))
    return out


def poisoned(update: ClientUpdate, name: str, value: float) -> ClientUpdate:
    params = dict(update.params)
    params[name] = params[name].clone()
    params[name].view(-1)[0] = value
    return ClientUpdate(update.client, update.weight, update.indices, params, update.masks)


def assert_same_result(got, expected, atol: float = 1e-5) -> None:
    assert got.included == expected.included and got.excluded == expected.excluded
    for name, value in expected.params.items():
        scale = max(1.0, float(value.abs().max()))
        assert got.params[name].dtype == value.dtype
        assert torch.allclose(got.params[name], value, atol=atol * scale, rtol=0), name
