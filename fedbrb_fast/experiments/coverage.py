"""How often each tile was trained over a whole run, replayed from the config alone: client
sampling, widths and plans are pure functions of (config, seed, round), and FedBRB's shear
coefficients of the model's layout (docs/algorithm.md#shear)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import ExperimentConfig
from ..models import ModelLayout, build_family
from ..plans import (
    assign_widths,
    element_coverage,
    layout_coverage,
    make_round_plans,
    sample_clients,
    shear_coefficients,
    tile_coverage,
)

# The weight between channel groups 0 and 1: in the MLP and the CNN the first hidden-to-hidden
# weight, in PreResNet-18 the first block's conv1 (its inner group reads stage 0's stream).
OUT_GROUP, IN_GROUP = 1, 0


@dataclass(frozen=True)
class Coverage:
    whole_tiles: Tensor  # [R_out*K, R_in*K] client plans that trained the whole tile (R: segments, else 1)
    elements: Tensor  # [out, in] client plans that trained each element
    num_blocks: int
    notes: list[str]  # over every tensor of the layout: diagonal-only tensors, tiles never trained whole

    def tile_means(self) -> Tensor:
        """[R_out*K, R_in*K] mean over each tile's elements of how many plans trained it: equal to
        `whole_tiles` for block-aligned plans (FedBRB, HeteroFL), and fair to plans that train
        parts of tiles (FedRolex's one-channel steps, FD's random channels)."""
        t_out, t_in = self.whole_tiles.shape
        out, inp = self.elements.shape
        return self.elements.view(t_out, out // t_out, t_in, inp // t_in).double().mean(dim=(1, 3))


def planning_layout(cfg: ExperimentConfig) -> ModelLayout:
    """The global model's layout as the plans see it: its groups and adjacency, which do not depend
    on the input or the classes, so a nominal input and two classes stand in for the data's."""
    input_shape = (1, 1, 1) if cfg.model.needs_images else (1,)
    return build_family(cfg.model, input_shape, 2).layout


def replay_coverage(cfg: ExperimentConfig, out_group: int = OUT_GROUP, in_group: int = IN_GROUP) -> Coverage:
    """Coverage of the weight [N_out, N_in] between two adjacent channel groups, summed over all
    rounds, with the plans the simulation hands out (FedBRB rolls with the layout's shear), and
    the layout-wide notes of plans.LayoutCoverage.

    Counts the plans handed out, so a client lost to `faults.dropout` still counts. fedavg_small's
    global model is itself small; its plans are the whole global model, drawn here at full size."""
    layout = planning_layout(cfg)
    sizes = layout.group_sizes
    if (min(out_group, in_group), max(out_group, in_group)) not in layout.adjacency:
        raise ValueError(f"coverage of groups {in_group}->{out_group}: no tensor of the {cfg.model.arch!r} model is "
                         f"sliced by both (its {len(sizes)} channel groups' adjacent pairs: "
                         f"{sorted(layout.adjacency)})")
    c, k = cfg.clients, cfg.num_blocks
    shear = shear_coefficients(layout) if cfg.method.name == "fedbrb" else None
    widths = assign_widths(c.num_clients, c.widths, c.proportions, cfg.seed)
    segments = (layout.segments(out_group), layout.segments(in_group))
    tiles = torch.zeros(segments[0] * k, segments[1] * k, dtype=torch.int64)
    elements = torch.zeros(sizes[out_group], sizes[in_group], dtype=torch.int64)
    every_plan = []
    for t in range(cfg.rounds):
        clients = sample_clients(t, c.num_clients, c.per_round, cfg.seed)
        plans = make_round_plans(cfg.method.name, t, clients, [widths[i] for i in clients], group_sizes=sizes,
                                 num_blocks=k, seed=cfg.seed, schedule=cfg.method.schedule, shear=shear,
                                 group_segments=layout.group_segments)
        tiles += tile_coverage(plans, out_group, in_group, sizes[out_group], sizes[in_group], k, segments)
        elements += element_coverage(plans, out_group, in_group, sizes[out_group], sizes[in_group])
        every_plan += plans
    return Coverage(tiles, elements, k, layout_coverage(every_plan, layout, k).notes())
