"""Server-side evaluation of the global model (no client can run it in small-to-large)."""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import ArrayRecord, MetricRecord
from torch import Tensor

from ...models import ModelFamily
from ...training import evaluate


def global_evaluate_fn(model: ModelFamily, x_test: Tensor, y_test: Tensor,
                       batch_size: int = 1000) -> Callable[[int, ArrayRecord], MetricRecord]:
    """For `Strategy.start(evaluate_fn=...)`: accuracy and loss of the global model on a test set."""

    def evaluate_global(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        accuracy, loss = evaluate(model, dict(arrays.to_torch_state_dict()), x_test, y_test, batch_size)
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    return evaluate_global
