"""Engines train a round's clients; the simulation wires plan -> train -> aggregate -> evaluate."""

from .context import RoundContext, TrainedRound
from .reference import ReferenceEngine
from .simulation import ENGINES, RoundRecord, Simulation, build_federated_data

__all__ = ["ENGINES", "ReferenceEngine", "RoundContext", "RoundRecord", "Simulation", "TrainedRound", "build_federated_data"]
