"""Sampling a continuation from a language model: what a person reads to see what the global model learned."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ..models import ModelFamily


@torch.no_grad()
def sample_continuation(model: ModelFamily, params: Mapping[str, Tensor], prompt: Tensor, length: int, *,
                        context: int, temperature: float = 0.8, generator: torch.Generator | None = None) -> Tensor:
    """`length` token ids drawn one at a time after `prompt` (1-d ids), each from the model's
    next-token distribution at `temperature` (0: the most likely token), reading at most the last
    `context` tokens."""
    if prompt.dim() != 1 or not len(prompt):
        raise ValueError(f"prompt: a non-empty 1-d tensor of token ids, got shape {tuple(prompt.shape)}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    tokens = prompt.to(torch.int64)
    drawn = []
    for _ in range(length):
        logits = model.forward(params, tokens[-context:].unsqueeze(0), train=False)[0, -1]
        if temperature == 0:
            nxt = logits.argmax().view(1)
        else:
            probs = torch.softmax(logits.double() / temperature, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator)
        drawn.append(nxt)
        tokens = torch.cat([tokens, nxt])
    return torch.cat(drawn) if drawn else tokens.new_empty(0)
