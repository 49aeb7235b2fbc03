"""Local client training (reference, autograd) and global-model evaluation."""

from .evaluate import evaluate
from .local import LocalResult, LocalTraining, epoch_orders, masked_logits, minibatches, train_client

__all__ = ["LocalResult", "LocalTraining", "epoch_orders", "evaluate", "masked_logits", "minibatches", "train_client"]
