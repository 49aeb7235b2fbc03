"""How often each tile of one weight matrix was trained over a whole run, replayed from the
config alone: client sampling, widths and plans are pure functions of (config, seed, round)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import ExperimentConfig
from ..plans import assign_widths, element_coverage, make_round_plans, sample_clients, tile_coverage

# The weight between hidden groups 0 and 1: the first weight both of whose axes are sliced.
OUT_GROUP, IN_GROUP = 1, 0


@dataclass(frozen=True)
class Coverage:
    whole_tiles: Tensor  # [K, K] client plans that trained the whole tile
    elements: Tensor  # [out, in] client plans that trained each element
    num_blocks: int

    def tile_means(self) -> Tensor:
        """[K, K] mean over each tile's elements of how many plans trained it: equal to
        `whole_tiles` for block-aligned plans (FedBRB, HeteroFL), and fair to plans that train
        parts of tiles (FedRolex's one-channel steps, FD's random channels)."""
        k = self.num_blocks
        out, inp = self.elements.shape
        return self.elements.view(k, out // k, k, inp // k).double().mean(dim=(1, 3))


def replay_coverage(cfg: ExperimentConfig, out_group: int = OUT_GROUP, in_group: int = IN_GROUP) -> Coverage:
    """Coverage of the weight [N_out, N_in] between two hidden groups, summed over all rounds.

    Counts the plans handed out, so a client lost to `faults.dropout` still counts. fedavg_small's
    global model is itself small; its plans are the whole global model, drawn here at full size."""
    sizes = cfg.model.hidden_sizes
    if max(out_group, in_group) >= len(sizes):
        raise ValueError(f"coverage of groups {in_group}->{out_group} needs {max(out_group, in_group) + 1} hidden "
                         f"groups; the model has {len(sizes)}")
    c, k = cfg.clients, cfg.num_blocks
    widths = assign_widths(c.num_clients, c.widths, c.proportions, cfg.seed)
    tiles = torch.zeros(k, k, dtype=torch.int64)
    elements = torch.zeros(sizes[out_group], sizes[in_group], dtype=torch.int64)
    for t in range(cfg.rounds):
        clients = sample_clients(t, c.num_clients, c.per_round, cfg.seed)
        plans = make_round_plans(cfg.method.name, t, clients, [widths[i] for i in clients], group_sizes=sizes,
                                 num_blocks=k, seed=cfg.seed, schedule=cfg.method.schedule)
        tiles += tile_coverage(plans, out_group, in_group, sizes[out_group], sizes[in_group], k)
        elements += element_coverage(plans, out_group, in_group, sizes[out_group], sizes[in_group])
    return Coverage(tiles, elements, k)
