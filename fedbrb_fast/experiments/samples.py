"""Sampled continuations of a prompt from a language-model suite's final global models, so a person
can read what each method learned (docs/results.md)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..data.datasets import VOCABULARIES
from ..data.vocabulary import decode, encode
from ..methods import METHODS
from ..models import build_model
from ..outputs import MODEL
from ..training.generate import sample_continuation
from .suite import RunOutcome, Suite

PROMPT = "ROMEO. But soft, what light through yonder window breaks? It is the east, and"
LENGTH = 200
TEMPERATURE = 0.8
SAMPLE_SEED = 0


def continuation_samples(suite: Suite, outcomes: Sequence[RunOutcome]) -> dict[str, Any] | None:
    """Per method, LENGTH characters after PROMPT from its final global model in the suite's first
    scenario at its first seed (None unless the suite's model reads tokens). Every method draws
    with the same generator seed."""
    first = [o for o in outcomes if o.spec.scenario == suite.scenarios[0].name]
    if not first or not first[0].spec.config.model.needs_tokens:
        return None
    seed = min(o.spec.seed for o in first)
    texts = {}
    for method in METHODS:
        run = next((o for o in first if o.spec.arm == method and o.spec.seed == seed), None)
        if run is None:
            continue
        cfg = run.spec.config
        model = build_model(cfg, (cfg.data.seq_len,), len(VOCABULARIES[cfg.data.dataset]))
        params = load_file(str(Path(cfg.output_dir) / MODEL))
        ids = sample_continuation(model, params, torch.from_numpy(encode(PROMPT)), LENGTH, context=cfg.data.seq_len,
                                  temperature=TEMPERATURE, generator=torch.Generator().manual_seed(SAMPLE_SEED))
        texts[method] = decode(ids.numpy())
    return {"scenario": suite.scenarios[0].name, "seed": seed, "prompt": PROMPT, "temperature": TEMPERATURE,
            "texts": texts}
