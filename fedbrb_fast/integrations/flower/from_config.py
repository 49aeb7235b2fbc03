"""Flower pieces from a fedbrb_fast experiment config: the same data split, model, widths and
local training as `fedbrb-fast run`, with the nodes' `partition-id` as client id."""

from __future__ import annotations

from typing import Any

import torch
from flwr.app import ConfigRecordValues, Context
from flwr.clientapp import ClientApp
from torch import Tensor

from ...config import ExperimentConfig
from ...data import FederatedData
from ...models import ModelFamily
from ...plans import assign_widths
from ...schedules import lam_at, lr_at
from ...training import LocalTraining
from .client import make_client_app
from .records import training_config
from .strategy import FedBRB, FedRolex, HeteroFL, SubModelStrategy

STRATEGIES: dict[str, type[SubModelStrategy]] = {"fedbrb": FedBRB, "fedrolex": FedRolex, "heterofl": HeteroFL}


class ConfigPartitions:
    """`load_data` for a ClientApp: the node's partition of the config's federated split, built
    once per worker process (it is rebuilt after pickling, not shipped)."""

    def __init__(self, cfg: ExperimentConfig, torch_threads: int | None = 1) -> None:
        self.cfg, self.torch_threads = cfg, torch_threads
        self._data: FederatedData | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"cfg": self.cfg, "torch_threads": self.torch_threads, "_data": None}

    def __call__(self, context: Context) -> tuple[Tensor, Tensor]:
        if self._data is None:
            from ...engines import build_federated_data

            if self.torch_threads:  # simulation workers share the machine's cores
                torch.set_num_threads(self.torch_threads)
            self._data = build_federated_data(self.cfg)
        partition = int(context.node_config["partition-id"])
        if not 0 <= partition < self.cfg.clients.num_clients:
            raise ValueError(f"partition-id {partition} outside the config's {self.cfg.clients.num_clients} clients")
        return self._data.client_data(partition)


class RoundConfig:
    """The ConfigRecord entries of a round: the config's local training, lr by its schedule."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg

    def __call__(self, server_round: int) -> dict[str, ConfigRecordValues]:
        t = self.cfg.train
        lr = lr_at(server_round - 1, lr=t.lr, schedule=t.lr_schedule, milestones=t.lr_milestones, gamma=t.lr_gamma)
        return training_config(LocalTraining.of(t, lr))


def client_app_from_config(cfg: ExperimentConfig, model: ModelFamily) -> ClientApp:
    return make_client_app(model, ConfigPartitions(cfg), local=LocalTraining.of(cfg.train, cfg.train.lr),
                           seed=cfg.seed, eval_batch_size=cfg.eval.batch_size)


def strategy_from_config(cfg: ExperimentConfig, model: ModelFamily, **kwargs: Any) -> SubModelStrategy:
    """The config's method as a Flower strategy that runs the simulation's rounds: node k (by
    its reported partition-id) is client k, with the same widths, `per_round` sampling, plans,
    lam and learning-rate schedules and local training. Keyword arguments override."""
    method = cfg.method.name
    if method not in STRATEGIES:
        raise ValueError(f"method.name = {method!r} has no Flower strategy; choose from {sorted(STRATEGIES)}")
    if method == "fedbrb":
        m = cfg.method
        lam = m.lam if m.lam_schedule == "constant" else (
            lambda server_round: lam_at(server_round - 1, cfg.rounds, lam=m.lam, schedule=m.lam_schedule,
                                        lam_end=m.lam_end))
        kwargs = {"lam": lam, "schedule": m.schedule, **kwargs}
    c = cfg.clients
    widths = c.widths[0] if len(c.widths) == 1 else assign_widths(c.num_clients, c.widths, c.proportions, cfg.seed)
    kwargs = {"width": widths, "num_blocks": cfg.num_blocks, "weighting": cfg.clients.weighting,
              "aggregation_backend": cfg.aggregation.backend, "seed": cfg.seed, "client_ids": "reported",
              "fraction_train": c.per_round / c.num_clients, "min_train_nodes": c.per_round,
              "min_available_nodes": c.num_clients, "round_config": RoundConfig(cfg), **kwargs}
    return STRATEGIES[method](model.layout, **kwargs)
