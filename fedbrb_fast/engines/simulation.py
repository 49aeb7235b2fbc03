"""One experiment: data, global model, clients; each round plan -> gather/train -> aggregate -> evaluate.

The engine trains and combines; under the distributed engine every rank runs this same round on
its shard of the clients, and the engine's `combine` and `evaluate` add up the ranks' sums."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..aggregation import AggregationOverflow, AggregationResult, ClientBatch, ClientUpdate, rule_for_method
from ..config import ExperimentConfig
from ..data import FederatedData, load_dataset, make_federated
from ..faults import FaultEvent, corrupt, pick_clients, update_norms, without_clients
from ..models import build_model, initial_params
from ..plans import Shear, assign_widths, check_fedbrb_blocks, make_round_plans, sample_clients, shear_coefficients
from ..profiling import PhaseTimer
from ..schedules import lam_at, lr_at
from ..training import LocalTraining
from .base import Engine
from .batched import BatchedEngine
from .context import CombinedRound, RoundContext, TrainedRound
from .distributed import DistributedEngine
from .process_group import join_process_group
from .reference import ReferenceEngine


def make_engine(cfg: ExperimentConfig) -> Engine:
    """The configured engine; "distributed" joins the process group (see process_group.py)."""
    if cfg.train.engine == "reference":
        return ReferenceEngine()
    batched = BatchedEngine(cfg.train.max_clients_per_step, linear_backend=cfg.train.linear_backend,
                            device=cfg.train.device, cpu_trainer=cfg.train.cpu_trainer)
    if cfg.train.engine == "distributed":
        return DistributedEngine(batched, join_process_group(batched.device, cfg.train.dist_timeout_s))
    return batched


def build_federated_data(cfg: ExperimentConfig) -> FederatedData:
    d = cfg.data
    dataset = load_dataset(d.dataset, seed=cfg.seed, root=d.root, test_fraction=d.test_fraction,
                           synthetic_alpha=d.synthetic_alpha, synthetic_beta=d.synthetic_beta,
                           num_clients=cfg.clients.num_clients, synthetic_max_samples=d.synthetic_max_samples,
                           seq_len=d.seq_len, min_sequences=d.min_sequences,
                           max_test_sequences=d.max_test_sequences or None)  # 0: no cap
    return make_federated(dataset, num_clients=cfg.clients.num_clients, partition=d.partition, seed=cfg.seed,
                          alpha=d.dirichlet_alpha, shards_per_client=d.shards_per_client)


@dataclass
class RoundRecord:
    """One line of the metrics log."""

    round: int  # rounds completed (1-based)
    method: str
    accuracy: float | None
    loss: float | None
    perplexity: float | None  # exp(loss) for a language model's next-token loss, else None
    train_loss: float | None
    lr: float
    lam: float | None
    clients: int
    dropped: int
    excluded: int
    seconds: dict[str, float]
    events: list[FaultEvent]

    def flat(self) -> dict[str, Any]:
        row = {k: v for k, v in self.__dict__.items() if k not in ("seconds", "events")}
        row.update({f"sec_{k}": round(v, 6) for k, v in self.seconds.items()})
        return row


class Simulation:
    def __init__(self, cfg: ExperimentConfig, data: FederatedData | None = None) -> None:
        self.cfg = cfg
        self.data = data if data is not None else build_federated_data(cfg)
        self.model = build_model(cfg, self.data.input_shape, self.data.num_classes)
        # FedBRB's shear from the layout's adjacency and its blocks (per segment): a layout it cannot roll
        # is refused before any work.
        self.shear: tuple[Shear, ...] | None = None
        if cfg.method.name == "fedbrb":
            layout = self.model.layout
            self.shear = shear_coefficients(layout)
            check_fedbrb_blocks(layout.group_sizes, layout.group_segments, cfg.num_blocks)
        self.params: dict[str, Tensor] = initial_params(cfg, self.model)
        self.client_widths = assign_widths(
            cfg.clients.num_clients, cfg.clients.widths, cfg.clients.proportions, cfg.seed
        )
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
            plans = make_round_plans(
                cfg.method.name,
                t,
                clients,
                [self.client_widths[c] for c in clients],
                group_sizes=self.model.layout.group_sizes,
                num_blocks=cfg.num_blocks,
                seed=cfg.seed,
                schedule=cfg.method.schedule,
                shear=self.shear,
                group_segments=self.model.layout.group_segments,
            )
        lr = lr_at(
            t,
            lr=cfg.train.lr,
            schedule=cfg.train.lr_schedule,
            milestones=cfg.train.lr_milestones,
            gamma=cfg.train.lr_gamma,
        )
        ctx = RoundContext(
            round_idx=t,
            seed=cfg.seed,
            model=self.model,
            data=self.data,
            local=LocalTraining.of(cfg.train, lr),
            weighting=cfg.clients.weighting,
            label_masking=cfg.clients.label_mask,
        )
        f = cfg.faults
        dropped = pick_clients(clients, f.dropout, cfg.seed, t, salt=1)
        pieces = self.engine.train_pieces(ctx, [p for p in plans if p.client not in dropped], self.params,
                                          self.timer)
        returned = [c for c in clients if c not in dropped]
        corrupted = pick_clients(returned, f.corrupt, cfg.seed, t, salt=2)
        lam = lam_at(t, cfg.rounds, lam=cfg.method.lam, schedule=cfg.method.lam_schedule, lam_end=cfg.method.lam_end)
        losses: dict[int, float] = {}
        too_large: dict[int, str] = {}
        with self.timer.phase("aggregate"):  # pulls the pieces, whose training is timed as its own phases
            try:
                combined = self.engine.combine(self.params, self.model.layout,
                                               self._stream(pieces, corrupted, losses, too_large),
                                               rule_for_method(cfg.method.name, lam, cfg.num_blocks),
                                               backend=cfg.aggregation.backend, screened=too_large,
                                               train_losses=losses)
            except AggregationOverflow as exc:  # every rank sees the same sums, so all take this branch
                combined = CombinedRound(AggregationResult(self.params, [], {c: str(exc) for c in returned}), {})
            result = combined.result
            self.params = result.params
        self.round_idx += 1
        excluded = result.excluded
        events = (
            [FaultEvent(self.round_idx, c, "dropout", "never returned") for c in sorted(dropped)]
            + [FaultEvent(self.round_idx, c, "corrupted", f"injected {f.corrupt_kind}") for c in sorted(corrupted)]
            + [FaultEvent(self.round_idx, c, "excluded", why) for c, why in sorted(excluded.items())]
        )
        if not result.included:
            events.append(
                FaultEvent(
                    self.round_idx,
                    None,
                    "no_updates",
                    "no client update reached aggregation; the global model is unchanged",
                )
            )
        accuracy = loss = None
        if self.round_idx % cfg.eval.every == 0 or self.finished:
            with self.timer.phase("evaluate"):
                accuracy, loss = self.evaluate()
        seconds = self.timer.reset()
        seconds["total"] = time.perf_counter() - start
        kept = [combined.train_losses[c] for c in result.included]
        return RoundRecord(
            round=self.round_idx,
            method=cfg.method.name,
            accuracy=accuracy,
            loss=loss,
            perplexity=math.exp(min(loss, 700.0)) if loss is not None and cfg.model.needs_tokens else None,
            train_loss=sum(kept) / len(kept) if kept else None,
            lr=lr,
            lam=lam if cfg.method.name == "fedbrb" else None,
            clients=len(plans),
            dropped=len(dropped),
            excluded=len(excluded),
            seconds=seconds,
            events=events,
        )

    def _stream(self, pieces: Iterator[TrainedRound], corrupted: set[int], losses: dict[int, float],
                too_large: dict[int, str]) -> Iterator[ClientUpdate | ClientBatch]:
        """The round's updates as they are trained, one piece at a time (so memory holds one
        piece): faults injected, updates over the norm bound left out (into `too_large`), train
        losses recorded (into `losses`)."""
        for piece in pieces:
            losses.update(piece.train_losses)
            corrupt(piece.updates, corrupted, self.cfg.faults.corrupt_kind)
            kept, large = self._screen(piece.updates)
            too_large.update(large)
            del piece  # while the next piece trains, only the consumer may hold this one
            while kept:
                yield kept.pop(0)

    def _screen(self, updates):
        """Drop updates whose norm exceeds faults.max_update_norm (NaN norms are left to
        aggregation, which excludes non-finite updates)."""
        bound = self.cfg.faults.max_update_norm
        if bound is None:
            return updates, {}
        norms = update_norms(self.params, self.model.layout, updates)
        too_large = {c: f"update norm {n:.4g} exceeds max_update_norm {bound:g}" for c, n in norms.items() if n > bound}
        return without_clients(updates, set(too_large)), too_large

    def restore(self, params: dict[str, Tensor], round_idx: int) -> None:
        """Continue from a checkpoint: its global parameters after `round_idx` rounds."""
        expected = {s.name: s.shape for s in self.model.layout.params}
        got = {k: tuple(v.shape) for k, v in params.items()}
        if got != expected:
            raise ValueError(f"checkpoint tensors {got} do not match the model {expected}")
        if not 0 <= round_idx <= self.cfg.rounds:
            raise ValueError(f"checkpoint round {round_idx} is outside 0..{self.cfg.rounds}")
        self.params = {k: v.clone() for k, v in params.items()}
        self.round_idx = round_idx

    def evaluate(self) -> tuple[float, float]:
        return self.engine.evaluate(
            self.model, self.params, self.data.x_test, self.data.y_test, self.cfg.eval.batch_size
        )

    def state_dict(self) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in self.params.items()}
