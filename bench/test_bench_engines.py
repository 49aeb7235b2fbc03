"""pytest-benchmark: one round of local training, reference loop vs batched engine, same inputs.

Run with `make bench` (pytest bench --benchmark-enable); compare the two groups' means.
"""

import pytest
import torch

from fedbrb_fast.data import FederatedData
from fedbrb_fast.engines import BatchedEngine, ReferenceEngine, RoundContext
from fedbrb_fast.models import CNN, MLP
from fedbrb_fast.plans import make_round_plans
from fedbrb_fast.profiling import PhaseTimer
from fedbrb_fast.training import LocalTraining


def setup(arch, clients, samples=50):
    g = torch.Generator().manual_seed(0)
    shape = (784,) if arch == "mlp" else (1, 28, 28)
    x = torch.randn(clients * samples, *shape, generator=g)
    y = torch.randint(0, 10, (clients * samples,), generator=g)
    data = FederatedData(x, y, x[:10], y[:10], 10, shape,
                         tuple(torch.arange(i * samples, (i + 1) * samples) for i in range(clients)))
    model = MLP(784, [1024, 1024], 10) if arch == "mlp" else CNN(1, [64, 128, 256, 512], 10, norm="bn")
    width, k = (1 / 8, 8) if arch == "mlp" else (1 / 16, 16)
    params = model.init(torch.Generator().manual_seed(0))
    plans = make_round_plans("fedbrb", 0, list(range(clients)), [width] * clients,
                             group_sizes=model.layout.group_sizes, num_blocks=k, seed=0,
                             group_segments=model.layout.group_segments)
    ctx = RoundContext(0, 0, model, data, LocalTraining(1, 10, 0.05, 0.9, 5e-4), "samples", False)
    return ctx, plans, params


@pytest.mark.parametrize("arch,clients", [("mlp", 100), ("cnn", 20)])
@pytest.mark.parametrize("engine", ["reference", "batched", "stacked"])
def test_round_training(benchmark, arch, clients, engine):
    """stacked: the batched engine without the client-major kernel (train.cpu_trainer)."""
    ctx, plans, params = setup(arch, clients)
    eng = ReferenceEngine() if engine == "reference" else BatchedEngine(
        cpu_trainer="stacked" if engine == "stacked" else "auto")
    benchmark.group = f"train {arch} x{clients}"
    benchmark.extra_info["clients"] = clients
    benchmark.pedantic(eng.train_round, args=(ctx, plans, params, PhaseTimer()), rounds=3, warmup_rounds=1)
