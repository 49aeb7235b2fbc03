"""Engines train a round's clients; the simulation wires plan -> train -> aggregate -> evaluate."""

from .context import RoundContext, TrainedRound
from .batched import BatchedEngine, width_chunks
from .reference import ReferenceEngine
from .simulation import RoundRecord, Simulation, build_federated_data, make_engine

__all__ = ["BatchedEngine", "ReferenceEngine", "make_engine", "width_chunks", "RoundContext", "RoundRecord", "Simulation", "TrainedRound", "build_federated_data"]
