"""The rounds bench_engines.py times: real data, the issue's models, and the three contenders.

Cases (train + aggregate of one round, evaluation excluded):
  mlp        MNIST-5k, MLP 784-[1024, 1024]-10 (no norm, no scaler: without a norm layer the scaler
             makes it diverge), width 1/8, 2 local epochs of batch 10
  cnn        MNIST-5k, HeteroFL CNN [64, 128, 256, 512] (static BatchNorm), width 1/16, 1 epoch of batch 10
  synthetic  FedProx Synthetic(1, 1) with its natural clients (unequal sizes), MLP 60-[256, 256]-10
             (GroupNorm), width 1/8, 1 epoch of batch 10
  preresnet  MNIST-5k, PreResNet-18 [64, 128, 256, 512] (static BatchNorm), width 1/16, 1 epoch of batch 10
  transformer  Shakespeare (LEAF clients: speaking roles, unequal sizes), the default Transformer (4
             layers, dim 256, 8 heads, MLP 1024, context 80), width 1/8, 1 epoch of batch 10
MNIST-5k clients hold 40 samples each: every block of 100 clients is an IID partition of the 4,000
training digits (a fresh permutation per block), so 1,000 or 10,000 clients per round do the same
work per client as 100 do, on real data stored once.

Contenders, each a callable running one whole round and returning its phase seconds:
  plain      bench/plain_loop.py (nn.Module per client, torch.optim.SGD, meshgrid-scatter aggregation)
  reference  the project's ReferenceEngine, aggregated with backend "auto" as the simulation runs it
  batched    the project's BatchedEngine, its chunks aggregated (backend "auto") as they are trained
  stacked    the same with train.cpu_trainer = "stacked" (no client-major kernel)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from plain_loop import PlainFamily, plain_round
from torch import Tensor

from fedbrb_fast.aggregation import AggregationRule, rule_for_method
from fedbrb_fast.data import Dataset, FederatedData, load_dataset
from fedbrb_fast.engines import BatchedEngine, ReferenceEngine, RoundContext
from fedbrb_fast.engines.base import aggregate_stream
from fedbrb_fast.models import CNN, MLP, FunctionalView, Transformer
from fedbrb_fast.models.preresnet import PreResNet
from fedbrb_fast.plans import ClientPlan, make_round_plans, shear_coefficients
from fedbrb_fast.profiling import PhaseTimer
from fedbrb_fast.training import LocalTraining

CASES = ("mlp", "cnn", "synthetic", "preresnet", "transformer")
METHODS = ("fedbrb", "fedrolex", "heterofl")
# stacked: the batched engine with every model trained step-major in batched torch ops
# (train.cpu_trainer = "stacked"; "batched" trains ReLU chains client-major where numba is installed).
# vmapped: the batched engine on the functional forward alone (models.FunctionalView), the path a
# family without a hand-written stacked forward takes.
CONTENDERS = ("plain", "reference", "batched", "stacked", "vmapped")
SAMPLES_PER_CLIENT = 40  # MNIST-5k: 4,000 training digits over 100 clients
ROUND = 1  # FedRolex's window starts at channel 1, FedBRB's roll counters at M
LAM = 0.5
SEED = 0

Round = Callable[[], dict[str, float]]  # runs one round, returns seconds per phase


@dataclass(frozen=True)
class EngineCase:
    name: str
    model: PlainFamily  # the families the plain loop (plain_loop.py) is written for
    data: FederatedData
    params: dict[str, Tensor]
    hp: LocalTraining
    width: float

    @property
    def num_blocks(self) -> int:
        return round(1 / self.width)

    def plans(self, method: str, clients: Sequence[int]) -> list[ClientPlan]:
        layout = self.model.layout
        return make_round_plans(method, ROUND, list(clients), [self.width] * len(clients),
                                group_sizes=layout.group_sizes, num_blocks=self.num_blocks, seed=SEED,
                                shear=shear_coefficients(layout), group_segments=layout.group_segments)

    def rule(self, method: str) -> AggregationRule:
        return rule_for_method(method, LAM, self.num_blocks)

    def context(self) -> RoundContext:
        return RoundContext(ROUND, SEED, self.model, self.data, self.hp, "samples", False)

    def training_gflop(self, clients: Sequence[int]) -> float:
        """Model FLOPs of forward + backward over the round's samples (weight and input gradients,
        without the first layer's input gradient, which nobody computes)."""
        widths = [max(1, round(self.width * n)) for n in self.model.layout.group_sizes]
        fwd = self.model.flops_per_sample(widths, self.data.input_shape)
        first = self.model.layout.params[0]  # the first layer's weight, or an embedding table (no FLOPs)
        if first.role == "weight":
            assert first.fan_in is not None
            positions = math.prod(self.data.input_shape[1:]) if len(first.shape) == 4 else 1  # conv: every pixel
            first_dx = 2 * positions * widths[0] * first.fan_in
        else:
            first_dx = 0
        samples = sum(self.data.num_samples(c) for c in clients) * self.hp.epochs
        return (3 * fwd - first_dx) * samples / 1e9


def mnist5k_clients(num_clients: int, seed: int = SEED) -> FederatedData:
    """`num_clients` clients of 40 real MNIST digits; each block of 100 partitions the training set."""
    ds = load_dataset("mnist5k", seed=seed)
    per_block = len(ds.y_train) // SAMPLES_PER_CLIENT
    blocks = [torch.randperm(len(ds.y_train), generator=torch.Generator().manual_seed(seed * 7919 + b))
              for b in range((num_clients + per_block - 1) // per_block)]
    clients = tuple(blocks[k // per_block][(k % per_block) * SAMPLES_PER_CLIENT:][:SAMPLES_PER_CLIENT].sort().values
                    for k in range(num_clients))
    return FederatedData(ds.x_train, ds.y_train, ds.x_test, ds.y_test, ds.num_classes, ds.input_shape, clients)


def synthetic_clients(num_clients: int, seed: int = SEED) -> FederatedData:
    return natural_clients(load_dataset("synthetic", seed=seed, num_clients=num_clients, synthetic_max_samples=1000))


def shakespeare_clients(num_clients: int, seed: int = SEED) -> FederatedData:
    """`num_clients` speaking roles of the plays (a seeded choice), 80-character sequences."""
    return natural_clients(load_dataset("shakespeare", seed=seed, num_clients=num_clients))


def natural_clients(ds: Dataset) -> FederatedData:
    """A dataset with its own clients, as the engines see it."""
    assert ds.natural_clients is not None
    return FederatedData(ds.x_train, ds.y_train, ds.x_test, ds.y_test, ds.num_classes, ds.input_shape,
                         ds.natural_clients, vocabulary=ds.vocabulary)


def make_case(name: str, num_clients: int, *, tiny: bool = False) -> EngineCase:
    """The case `name` with `num_clients` clients; `tiny` shrinks the models (tests, --quick)."""
    if name == "mlp":
        model: PlainFamily = MLP(784, [64, 64] if tiny else [1024, 1024], 10, norm="none", scaler=False)
        data, hp, width = mnist5k_clients(num_clients), LocalTraining(2, 10, 0.02, 0.9, 5e-4), 1 / 8
    elif name == "cnn":
        model = CNN(1, [64, 64, 64, 64] if tiny else [64, 128, 256, 512], 10, norm="bn")
        data, hp, width = mnist5k_clients(num_clients), LocalTraining(1, 10, 0.02, 0.9, 5e-4), 1 / 16
    elif name == "synthetic":
        model = MLP(60, [64, 64] if tiny else [256, 256], 10, norm="gn", norm_groups=2 if tiny else 4)
        data, hp, width = synthetic_clients(num_clients), LocalTraining(1, 10, 0.01, 0.9, 5e-4), 1 / 8
    elif name == "preresnet":
        model = PreResNet(1, [16, 32, 32, 32] if tiny else [64, 128, 256, 512], 10, norm="bn")
        data, hp, width = mnist5k_clients(num_clients), LocalTraining(1, 10, 0.02, 0.9, 5e-4), 1 / 16
    elif name == "transformer":
        data = shakespeare_clients(num_clients)
        layers, dim, heads, mlp = (2, 32, 4, 64) if tiny else (4, 256, 8, 1024)
        model = Transformer(data.num_classes, context=data.input_shape[0], dim=dim, heads=heads, mlp=mlp,
                            layers=layers)
        hp, width = LocalTraining(1, 10, 0.05, 0.9, 5e-4), 1 / 8
    else:
        raise ValueError(f"unknown case {name!r}; expected one of {CASES}")
    params = model.init(torch.Generator().manual_seed(SEED))
    return EngineCase(name, model, data, params, hp, width)


def contender(name: str, case: EngineCase, method: str, clients: Sequence[int], *,
              max_clients_per_step: int = 256, device: str = "cpu") -> Round:
    """A callable that runs one round of `name` on `clients` (train + aggregate). On `device`
    "cuda" the plain loop holds the global model there and the batched engine trains there
    (train.device); the reference engine runs on the CPU only."""
    plans, rule, ctx = case.plans(method, clients), case.rule(method), case.context()
    if name == "plain":
        params = {k: v.to(device) for k, v in case.params.items()}

        def run_plain() -> dict[str, float]:
            plain_round(case.model, params, case.data, plans, case.hp, rule, seed=SEED, round_idx=ROUND)
            return {}
        return run_plain
    if name not in ("reference", "batched", "stacked", "vmapped"):
        raise ValueError(f"unknown contender {name!r}; expected one of {CONTENDERS}")
    if name == "reference" and device != "cpu":
        raise ValueError(f"the reference engine runs on the CPU only, not on {device!r}")
    engine = ReferenceEngine() if name == "reference" else BatchedEngine(
        max_clients_per_step, device=device, cpu_trainer="stacked" if name == "stacked" else "auto")
    if name == "vmapped":
        ctx = replace(ctx, model=FunctionalView(case.model))

    def run_engine() -> dict[str, float]:
        """As the simulation runs a round: chunks trained as aggregation asks for them."""
        timer = PhaseTimer()
        pieces = engine.train_pieces(ctx, plans, case.params, timer)
        with timer.phase("aggregate"):
            aggregate_stream(case.params, case.model.layout, (u for p in pieces for u in p.updates), rule,
                             backend="auto")
        return dict(timer.seconds)
    return run_engine
