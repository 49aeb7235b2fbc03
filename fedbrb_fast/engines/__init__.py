"""Engines train a round's clients (one process, or sharded over a torch.distributed group); the
simulation wires plan -> train -> aggregate -> evaluate."""

from .base import Engine
from .batched import BatchedEngine, width_chunks
from .context import CombinedRound, RoundContext, TrainedRound
from .distributed import DistributedEngine
from .process_group import DistributedError, is_main_process
from .reference import ReferenceEngine
from .simulation import RoundRecord, Simulation, build_federated_data, make_engine

__all__ = ["BatchedEngine", "CombinedRound", "DistributedEngine", "DistributedError", "Engine", "ReferenceEngine",
           "make_engine", "width_chunks", "RoundContext", "RoundRecord", "Simulation", "TrainedRound",
           "build_federated_data", "is_main_process"]
