import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# Where there is no GPU the Triton kernels run under the interpreter on CPU tensors; where there is
# one they are compiled. Decided here, before any @triton.jit decorator runs.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
TRITON_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu") is not None and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")


@pytest.fixture
def float64() -> Iterator[None]:
    """Tensors created in the test default to float64 (exact comparisons); restored after."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture
def fresh_cpu_kernels(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """An empty compiled-kernel cache (yielded) and no memoized library, restored afterwards."""
    from fedbrb_fast.kernels import bias_gelu_cpu, causal_attention_cpu, cpu_library, layer_norm_cpu

    memoized = (cpu_library.load, cpu_library.unavailable, cpu_library.warn_fallback, causal_attention_cpu._library,
                causal_attention_cpu.lanes_unavailable, layer_norm_cpu._library, bias_gelu_cpu._library)
    monkeypatch.setenv("FEDBRB_FAST_CACHE", str(tmp_path))
    for fn in memoized:
        fn.cache_clear()
    yield tmp_path
    monkeypatch.undo()
    for fn in memoized:
        fn.cache_clear()


@pytest.fixture
def kernel_device() -> torch.device:
    """Where the Triton kernels' tensors live: the CPU under the interpreter, else the GPU."""
    return torch.device("cpu" if TRITON_INTERPRETED else "cuda")


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
