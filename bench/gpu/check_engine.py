"""Check `engine_cuda`: the batched engine with train.device = "cuda" — linear layers through torch
and through the Triton grouped GEMM — against the reference engine on the CPU, two rounds of every
method on every model family the config accepts, same seed and data: global parameters after
the two rounds, accuracy and loss of each round. TF32 is off, so both sides compute in fp32."""

from __future__ import annotations

from typing import Any

import torch
from harness import Context, Recorder, poison_allocator, relative_error

from fedbrb_fast.config import MODEL_CONFIGS, FamilyConfig, NormedConfig, config_from_dict
from fedbrb_fast.data import FederatedData
from fedbrb_fast.engines import Simulation
from fedbrb_fast.engines.simulation import RoundRecord, build_federated_data
from fedbrb_fast.methods import METHODS
from fedbrb_fast.models import registered_archs

ROUNDS = 2
PARAMS_TOLERANCE = 2e-4  # relative to each tensor's largest entry (the CPU tests allow atol 1e-4, rtol 1e-3)
ACCURACY_TOLERANCE = 0.01  # a sample or two of the test set may flip
LOSS_TOLERANCE = 1e-3  # relative


def model_families() -> tuple[str, ...]:
    """Every registered `model.arch`: a new family enters this check by existing."""
    return registered_archs()


def model_section(arch: str, big: bool) -> dict[str, Any]:
    """The family's default [model] section 4 times narrower, with static BatchNorm where the family
    has the norm options; in a dry run 8 times narrower with GroupNorm over all of a sample's
    channels: on 8x8 digits PreResNet-18's last stage is 1x1, where BatchNorm of a two-sample batch
    turns float32 rounding in the reference engine itself into a 1e-2 drift of the model (float64:
    both engines agree to 1e-14)."""
    family = family_config(arch)
    defaults = family.model_validate({"arch": arch})
    norm = {} if not issubclass(family, NormedConfig) else {"norm": "bn"} if big else {"norm": "gn", "norm_groups": 1}
    if family.needs_tokens:  # one layer 8 times narrower: the CPU reference engine's time bounds the check
        return {**defaults.narrowed(8).model_dump(exclude_none=True), "layers": 1}
    return {**defaults.narrowed(4 if big else 8).model_dump(exclude_none=True), **norm}


def family_config(arch: str) -> type[FamilyConfig]:
    return next(c for c in MODEL_CONFIGS if c.model_fields["arch"].default == arch)


def data_section(arch: str, big: bool) -> dict[str, Any]:
    """A language model reads Shakespeare's speaking roles (a capped test set); the others digits."""
    if family_config(arch).needs_tokens:
        return {"dataset": "shakespeare", "partition": "natural", "max_test_sequences": 500 if big else 40}
    return {"dataset": "mnist5k" if big else "digits", "partition": "dirichlet", "dirichlet_alpha": 0.5}


def config(arch: str, method: str, seed: int, big: bool, **train: Any) -> dict[str, Any]:
    """MNIST-5k (28x28; sklearn's 8x8 digits in a dry run), 100 clients of about 40 samples, a
    few local steps: long local training in float32 amplifies rounding differences chaotically (a
    CNN with BN drifted by 1e-2 over 65 steps where float64 agreed to 1e-14), hiding real errors."""
    return {
        "name": "gpu-check", "seed": seed, "rounds": ROUNDS,
        "data": data_section(arch, big),
        "model": model_section(arch, big),
        "clients": {"num_clients": 100, "per_round": 20 if big else 4, "widths": ["1/4", "1/2"], "proportions": [1, 1]},
        "method": {"name": method, "lam": 0.5},
        "train": {"local_epochs": 1, "batch_size": 20, "lr": 0.02, **train},
        "eval": {"every": 1, "batch_size": 1000},
        # a dry run spares the numba backend's first-call compilation (seconds of CPU)
        "aggregation": {"backend": "auto" if big else "torch"},
    }


def run(raw: dict[str, Any], data: FederatedData) -> tuple[list[RoundRecord], dict[str, torch.Tensor]]:
    sim = Simulation(config_from_dict(raw), data)
    records = [sim.run_round() for _ in range(ROUNDS)]
    return records, sim.params


def engine_cuda(ctx: Context, rec: Recorder) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    seed = ctx.seed % 100_000
    device = ctx.device.type
    families = model_families()
    datasets: dict[str, FederatedData] = {}  # one per dataset, shared by its families
    methods = METHODS if ctx.cuda else ("fedbrb",)
    if not ctx.cuda:
        rec.skip('train.device = "cuda"', "no CUDA: the batched engine ran on the CPU against the reference")
        rec.skip(f"methods {', '.join(METHODS[1:])}", "a dry run exercises the path with fedbrb only (CPU time)")
        rec.skip("Triton linears on the MLP", "interpreted 784-wide layers take seconds per step; the CNN's "
                                               "classifier runs them in a dry run")
    for arch in families:
        dataset = data_section(arch, ctx.cuda)["dataset"]
        if dataset not in datasets:
            datasets[dataset] = build_federated_data(config_from_dict(config(arch, "fedbrb", seed, ctx.cuda)))
        data = datasets[dataset]
        for method in methods:
            reference, ref_params = run(config(arch, method, seed, ctx.cuda, engine="reference"), data)
            for backend in ("torch", "triton"):
                if backend == "triton" and arch == "mlp" and not ctx.cuda:
                    continue
                raw = config(arch, method, seed, ctx.cuda, engine="batched", device=device, linear_backend=backend)
                poison_allocator(ctx.device)  # what the engine allocates on the GPU starts as NaN
                records, params = run(raw, data)
                label = f"{arch} {method} batched[{device}, {backend}]"
                rec.case(f"{label}: global parameters after {ROUNDS} rounds",
                         max(relative_error(params[k], ref_params[k]) for k in ref_params), PARAMS_TOLERANCE)
                for r, (got, want) in enumerate(zip(records, reference, strict=True), start=1):
                    assert got.accuracy is not None and want.accuracy is not None  # eval.every = 1
                    assert got.loss is not None and want.loss is not None
                    rec.case(f"{label}: round {r} accuracy {got.accuracy:.4f} vs {want.accuracy:.4f}",
                             abs(got.accuracy - want.accuracy), ACCURACY_TOLERANCE)
                    rec.case(f"{label}: round {r} loss", abs(got.loss - want.loss) / abs(want.loss), LOSS_TOLERANCE)
    n_ok = sum(c["ok"] for c in rec.cases)
    rec.summary = (f"{n_ok}/{len(rec.cases)} cases ok: {', '.join(families)} x {len(methods)} methods x "
                   f"torch/triton linears on {device}")
