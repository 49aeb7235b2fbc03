import os

# Triton kernels must see the interpreter before any @triton.jit decorator runs (no GPU here).
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def tiny_cfg_dict(tmp_path):
    """A config small enough for a full run in well under a second per method."""
    return {
        "name": "tiny",
        "seed": 3,
        "rounds": 2,
        "output_dir": str(tmp_path / "run"),
        "data": {"dataset": "digits", "partition": "shards", "shards_per_client": 2},
        "model": {"arch": "mlp", "hidden": [32, 16], "norm": "none"},
        "clients": {"num_clients": 12, "per_round": 5, "widths": ["1/4", "1/2"], "proportions": [1, 1]},
        "method": {"name": "fedbrb", "lam": 0.5},
        "train": {"local_epochs": 1, "batch_size": 8, "lr": 0.05},
        "eval": {"every": 1, "batch_size": 256},
    }


@pytest.fixture
def crash_in_round(monkeypatch):
    """`disarm = crash_in_round(k)`: the simulation dies (SystemExit) when it starts round k
    (1-based), until `disarm()`."""
    from fedbrb_fast.engines import Simulation

    def arm(k: int):
        original = Simulation.run_round

        def run_round(self):
            if self.round_idx == k - 1:
                raise SystemExit("simulated crash")
            return original(self)

        monkeypatch.setattr(Simulation, "run_round", run_round)
        return lambda: monkeypatch.setattr(Simulation, "run_round", original)
    return arm
