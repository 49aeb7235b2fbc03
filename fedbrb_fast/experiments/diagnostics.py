"""What a run's final global model computes, measured on its saved weights: how confident it is
(the temperature that calibrates it), how large its logits are against its width-1/K sub-models',
how those sub-models score, and how alike its tiles are (docs/algorithm.md#tiled-init). Diagnostics
only: nothing here feeds back into a run.

- temperature: the T > 0 that minimizes the mean cross-entropy of logits / T, fitted on one half of
  the test set (even positions) and on the other (odd), their geometric mean; `loss_at_temperature`
  is the test loss of logits / T with each half scored at the T fitted on the other (cross-fitted,
  so no sample is scored by a T it chose). Not the training data: a model that fits it perfectly
  (fedavg here) has no finite T there. T well above 1: the model is overconfident.
- logit_scale: the mean over test samples of the standard deviation of the global model's logits
  over the classes, divided by the same for its K diagonal sub-models (block b of every group, the
  plans of FedBRB's first K roll counters), each run as a width-1/K client runs it (the scaler on).
- submodel_accuracy: those K sub-models' mean test accuracy.
- tile_coherence: for the weight between channel groups coverage.IN_GROUP and OUT_GROUP, the norm
  of the mean of its T tiles over the root mean square tile norm: 1 when every tile is equal,
  about 1/sqrt(T) for independent random tiles.

fedavg_small's global model is itself the small model: it has no sub-models or tiles (None)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from ..config import ExperimentConfig
from ..data import FederatedData
from ..models import ModelFamily, ModelLayout, build_family, build_model, extract
from ..outputs import MODEL
from ..plans import fedbrb_indices
from ..training.local import token_cross_entropy
from .coverage import IN_GROUP, OUT_GROUP

DIAGNOSTICS = ("test_loss", "temperature", "loss_at_temperature", "logit_scale", "submodel_accuracy",
               "tile_coherence")
LOG_T_RANGE = (-7.0, 7.0)  # the temperature is searched in [e^-7, e^7]
SEARCH_STEPS = 80  # golden-section steps: the bracket shrinks by 0.618^80, far below the loss's own rounding


@torch.no_grad()
def logits_of(model: ModelFamily, params: Mapping[str, Tensor], x: Tensor, batch_size: int, *,
              beta: float = 1.0, train: bool = False) -> Tensor:
    """Logits over `x` in the evaluation's in-order batches (static BatchNorm: each batch's statistics).
    `train` with `beta` runs the model as a width-beta client trains it (the scaler on)."""
    return torch.cat([model.forward(params, x[i:i + batch_size], beta=beta, train=train)
                      for i in range(0, len(x), batch_size)])


def cross_entropy(logits: Tensor, y: Tensor) -> float:
    return float(token_cross_entropy(logits, y))


def accuracy(logits: Tensor, y: Tensor) -> float:
    return float((logits.argmax(dim=-1) == y).double().mean())


def fit_temperature(logits: Tensor, y: Tensor) -> float:
    """argmin over T of the mean cross-entropy of logits / T; it is convex in 1 / T, so a golden-section
    search over log T finds it (deterministic, no optimizer state). The loss is summed in the logits'
    dtype: near its minimum it is flat, so float32 logits place T to about 1e-3 of itself."""
    def loss(log_t: float) -> float:
        return cross_entropy(logits / math.exp(log_t), y)

    return math.exp(golden_section_minimum(loss, *LOG_T_RANGE))


def cross_fitted_temperature(logits: Tensor, y: Tensor) -> tuple[float, float]:
    """(the geometric mean of the temperatures fitted on the even and the odd samples, the mean
    cross-entropy with each half scaled by the other half's temperature)."""
    halves = [slice(0, None, 2), slice(1, None, 2)]
    temps = [fit_temperature(logits[h], y[h]) for h in halves]
    scored = [(float(token_cross_entropy(logits[h] / t, y[h], reduction="sum")), y[h].numel())
              for h, t in zip(halves, reversed(temps), strict=True)]
    return math.sqrt(temps[0] * temps[1]), sum(s for s, _ in scored) / sum(n for _, n in scored)


def golden_section_minimum(f: Callable[[float], float], lo: float, hi: float, steps: int = SEARCH_STEPS) -> float:
    """The minimizer of a unimodal f on [lo, hi]."""
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = f(a), f(b)
    for _ in range(steps):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = f(b)
    return (lo + hi) / 2


def logit_spread(logits: Tensor) -> float:
    """The mean over samples (and positions) of the standard deviation of the logits over the classes."""
    return float(logits.double().std(dim=-1).mean())


def tile_coherence(tensor: Tensor, out_tiles: int, in_tiles: int) -> float:
    """||mean tile|| / sqrt(mean ||tile||^2) over the out_tiles x in_tiles tiles of axes 0 and 1."""
    n_out, n_in = tensor.shape[:2]
    tiles = tensor.double().reshape(out_tiles, n_out // out_tiles, in_tiles, n_in // in_tiles, -1)
    tiles = tiles.transpose(1, 2).reshape(out_tiles * in_tiles, -1)
    rms = float(tiles.square().sum(dim=1).mean().sqrt())
    return float(tiles.mean(dim=0).norm()) / rms if rms > 0 else 1.0


def coherence_tensor(layout: ModelLayout) -> str | None:
    """The tensor sliced by OUT_GROUP on axis 0 and IN_GROUP on axis 1 (None where the layout has none)."""
    return next((s.name for s in layout.params
                 if s.sliced_axes[:2] == ((0, OUT_GROUP), (1, IN_GROUP))), None)


def diagnose(cfg: ExperimentConfig, params: Mapping[str, Tensor], data: FederatedData) -> dict[str, float | None]:
    """The DIAGNOSTICS of the global model `params` of a run of `cfg` on `data`."""
    model = build_model(cfg, data.input_shape, data.num_classes)
    batch = cfg.eval.batch_size
    test = logits_of(model, params, data.x_test, batch)
    t, loss_at_t = cross_fitted_temperature(test, data.y_test)
    out: dict[str, float | None] = {
        "test_loss": cross_entropy(test, data.y_test), "temperature": t, "loss_at_temperature": loss_at_t,
        "logit_scale": None, "submodel_accuracy": None, "tile_coherence": None}
    if cfg.method.name == "fedavg_small":
        return out
    k, layout = cfg.num_blocks, model.layout
    small = build_family(cfg.model.narrowed(k), data.input_shape, data.num_classes)
    accuracies, spreads = [], []
    for b in range(k):
        idx = fedbrb_indices(b, 1 / k, layout.group_sizes, k, "diagonal", group_segments=layout.group_segments)
        sub = logits_of(small, extract(params, layout, idx), data.x_test, batch, beta=1 / k, train=True)
        accuracies.append(accuracy(sub, data.y_test))
        spreads.append(logit_spread(sub))
    out["submodel_accuracy"] = sum(accuracies) / k
    sub_spread = sum(spreads) / k
    out["logit_scale"] = logit_spread(test) / sub_spread if sub_spread > 0 else None
    name = coherence_tensor(layout)
    if name is not None:
        out["tile_coherence"] = tile_coherence(params[name], layout.segments(OUT_GROUP) * k,
                                               layout.segments(IN_GROUP) * k)
    return out


def diagnose_run(cfg: ExperimentConfig, run_dir: str | Path, data: FederatedData) -> dict[str, float | None]:
    """diagnose() on the final global model a run saved in `run_dir`."""
    return diagnose(cfg, load_file(str(Path(run_dir) / MODEL)), data)

