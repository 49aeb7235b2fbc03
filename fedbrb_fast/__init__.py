"""fedbrb_fast: a fast simulator for model-heterogeneous federated learning (FedBRB and baselines).

Data flow, one direction: config -> data -> models -> plans -> engines (train) -> aggregation ->
evaluation -> outputs.
"""

__version__ = "0.1.0"
