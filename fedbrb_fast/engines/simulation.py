"""One experiment: data, global model, clients; each round plan -> gather/train -> aggregate -> evaluate."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..aggregation import aggregate, rule_for_method
from ..config import ExperimentConfig
from ..data import FederatedData, load_dataset, make_federated
from ..models import build_model
from ..plans import assign_widths, make_round_plans, sample_clients
from ..profiling import PhaseTimer
from ..schedules import lam_at, lr_at
from ..seeding import STREAM_INIT, torch_generator
from ..training import LocalTraining, evaluate
from .context import RoundContext
from .batched import BatchedEngine
from .reference import ReferenceEngine


def make_engine(cfg: ExperimentConfig) -> ReferenceEngine | BatchedEngine:
    if cfg.train.engine == "batched":
        return BatchedEngine(cfg.train.max_clients_per_step)
    return ReferenceEngine()


def build_federated_data(cfg: ExperimentConfig) -> FederatedData:
    d = cfg.data
    dataset = load_dataset(d.dataset, seed=cfg.seed, root=d.root, test_fraction=d.test_fraction,
                           synthetic_alpha=d.synthetic_alpha, synthetic_beta=d.synthetic_beta,
                           num_clients=cfg.clients.num_clients, synthetic_max_samples=d.synthetic_max_samples)
    return make_federated(dataset, num_clients=cfg.clients.num_clients, partition=d.partition, seed=cfg.seed,
                          alpha=d.dirichlet_alpha, shards_per_client=d.shards_per_client)


@dataclass
class RoundRecord:
    """One line of the metrics log."""

    round: int  # rounds completed (1-based)
    method: str
    accuracy: float | None
    loss: float | None
    train_loss: float | None
    lr: float
    lam: float | None
    clients: int
    excluded: int
    seconds: dict[str, float]

    def flat(self) -> dict[str, Any]:
        row = {k: v for k, v in self.__dict__.items() if k != "seconds"}
        row.update({f"sec_{k}": round(v, 6) for k, v in self.seconds.items()})
        return row


class Simulation:
    def __init__(self, cfg: ExperimentConfig, data: FederatedData | None = None) -> None:
        self.cfg = cfg
        self.data = data if data is not None else build_federated_data(cfg)
        self.model = build_model(cfg, self.data.input_shape, self.data.num_classes)
        self.params: dict[str, Tensor] = self.model.init(torch_generator(cfg.seed, STREAM_INIT))
        self.client_widths = assign_widths(cfg.clients.num_clients, cfg.clients.widths, cfg.clients.proportions, cfg.seed)
        self.engine = make_engine(cfg)
        self.round_idx = 0
        self.timer = PhaseTimer()

    @property
    def finished(self) -> bool:
        return self.round_idx >= self.cfg.rounds

    def run_round(self) -> RoundRecord:
        cfg, t = self.cfg, self.round_idx
        start = time.perf_counter()
        with self.timer.phase("plan"):
            clients = sample_clients(t, cfg.clients.num_clients, cfg.clients.per_round, cfg.seed)
            plans = make_round_plans(cfg.method.name, t, clients, [self.client_widths[c] for c in clients],
                                     group_sizes=self.model.layout.group_sizes, num_blocks=cfg.num_blocks,
                                     seed=cfg.seed, schedule=cfg.method.schedule)
        lr = lr_at(t, lr=cfg.train.lr, schedule=cfg.train.lr_schedule, milestones=cfg.train.lr_milestones,
                   gamma=cfg.train.lr_gamma)
        ctx = RoundContext(round_idx=t, seed=cfg.seed, model=self.model, data=self.data,
                           local=LocalTraining(cfg.train.local_epochs, cfg.train.batch_size, lr, cfg.train.momentum,
                                               cfg.train.weight_decay, cfg.train.clip_norm),
                           weighting=cfg.clients.weighting, label_masking=cfg.clients.label_mask)
        trained = self.engine.train_round(ctx, plans, self.params, self.timer)
        lam = lam_at(t, cfg.rounds, lam=cfg.method.lam, schedule=cfg.method.lam_schedule, lam_end=cfg.method.lam_end)
        with self.timer.phase("aggregate"):
            result = aggregate(self.params, self.model.layout, trained.updates,
                               rule_for_method(cfg.method.name, lam, cfg.num_blocks))
            self.params = result.params
        self.round_idx += 1
        accuracy = loss = None
        if self.round_idx % cfg.eval.every == 0 or self.finished:
            with self.timer.phase("evaluate"):
                accuracy, loss = self.evaluate()
        seconds = self.timer.reset()
        seconds["total"] = time.perf_counter() - start
        kept = [trained.train_losses[c] for c in result.included]
        return RoundRecord(round=self.round_idx, method=cfg.method.name, accuracy=accuracy, loss=loss,
                           train_loss=sum(kept) / len(kept) if kept else None, lr=lr,
                           lam=lam if cfg.method.name == "fedbrb" else None, clients=len(plans),
                           excluded=len(result.excluded), seconds=seconds)

    def evaluate(self) -> tuple[float, float]:
        return evaluate(self.model, self.params, self.data.x_test, self.data.y_test, self.cfg.eval.batch_size)

    def state_dict(self) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in self.params.items()}

