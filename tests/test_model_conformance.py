"""One conformance test over the model registry: every registered family (and the test-only family
of tests/tiny_family.py, which has no hand-written stacked forward) keeps its layout's invariants,
and its reference forward, its vmapped forward and its hand-written stacked forward (where it has
one) agree, with their gradients, on padded batches whose padding changes nothing."""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tiny_family import TinyConfig, TinyNet
from torch import Tensor

import fedbrb_fast
from fedbrb_fast.config import MODEL_ARCHS, CNNConfig, FamilyConfig, MLPConfig, PreResNetConfig, TransformerConfig
from fedbrb_fast.models import (
    FAMILIES,
    ModelFamily,
    build_family,
    extract,
    register_family,
    registered_archs,
    stacked_forward_of,
    vmapped_forward,
)
from fedbrb_fast.models.layout import FAN_IN_ROLES, ROLES, ModelLayout
from fedbrb_fast.training.local import token_cross_entropy

CLASSES = 5
# Per family, small instances (its [model] section, input shape); a new family adds its own here.
CASES: dict[str, list[tuple[FamilyConfig, tuple[int, ...]]]] = {
    "mlp": [(MLPConfig(hidden=[8, 16], norm=norm, norm_groups=2), (12,)) for norm in ("none", "bn", "gn")],
    "cnn": [(CNNConfig(hidden=[8, 16, 8], norm=norm, norm_groups=2), (2, 9, 9)) for norm in ("none", "bn", "gn")],
    "preresnet18": [(PreResNetConfig(widths=[4, 8, 8, 4], norm=norm, norm_groups=2), (2, 8, 8))
                    for norm in ("bn", "gn", "none")],
    "transformer": [(TransformerConfig(layers=2, dim=16, heads=2, mlp=8, context=7, scaler=scaler), (6,))
                    for scaler in (True, False)],
    "tiny": [(TinyConfig(widths=(8, 12)), (12,))],
}
CASE_IDS = [(arch, i) for arch, cases in CASES.items() for i in range(len(cases))]


@pytest.fixture
def registry() -> Iterator[tuple[str, ...]]:
    """The registry with the test-only family added through the public API."""
    register_family("tiny", TinyConfig, TinyNet.from_config)
    yield registered_archs()
    del FAMILIES["tiny"]


def build(arch: str, i: int) -> tuple[ModelFamily, tuple[int, ...]]:
    cfg, shape = CASES[arch][i]
    return build_family(cfg, shape, CLASSES), shape


def inputs(arch: str, i: int, batch: tuple[int, ...], generator: torch.Generator | None = None) -> Tensor:
    """Random inputs of a case: token ids for a language model, standard normal values otherwise."""
    cfg, shape = CASES[arch][i]
    if cfg.needs_tokens:
        return torch.randint(0, CLASSES, (*batch, *shape), generator=generator)
    return torch.randn(*batch, *shape, generator=generator)


def targets(arch: str, i: int, batch: tuple[int, ...], generator: torch.Generator | None = None) -> Tensor:
    """Labels of a case: one per sample, or one next token per position for a language model."""
    cfg, shape = CASES[arch][i]
    return torch.randint(0, CLASSES, (*batch, *(shape if cfg.needs_tokens else ())), generator=generator)


def random_indices(layout: ModelLayout, width: float, generator: torch.Generator) -> tuple[Tensor, ...]:
    """Per group a random index set of width * d_g channels, the same inside every segment."""
    out = []
    for g in range(len(layout.group_sizes)):
        d = layout.segment_size(g)
        idx = torch.randperm(d, generator=generator)[: int(width * d)].sort().values
        out.append(torch.cat([r * d + idx for r in range(layout.segments(g))]))
    return tuple(out)


def test_every_registered_family_has_cases_and_a_config(registry):
    assert set(registry) == set(CASES)
    assert set(MODEL_ARCHS) == set(registry) - {"tiny"}  # the config accepts every real family


def test_an_unknown_arch_is_refused_naming_the_field(registry):
    other = TinyConfig().model_copy(update={"arch": "other"})  # a section no family registered (unvalidated)
    with pytest.raises(ValueError, match="model.arch: no model family 'other' is registered"):
        build_family(other, (12,), CLASSES)
    with pytest.raises(ValueError, match="already registered"):
        register_family("tiny", TinyConfig, TinyNet.from_config)


@pytest.mark.parametrize("arch,i", CASE_IDS)
def test_layout_invariants(registry, arch, i):
    model, shape = build(arch, i)
    layout = model.layout
    assert model.arch == arch
    assert list(layout.group_sizes) == CASES[arch][i][0].group_sizes  # what the config checks at load
    for spec in layout.params:
        assert spec.role in ROLES, spec.name
        if spec.role in FAN_IN_ROLES:
            assert spec.fan_in is not None and spec.fan_in >= 1, spec.name
        for axis, g in spec.sliced_axes:  # every sliced axis matches its group
            assert spec.shape[axis] == layout.group_sizes[g], spec.name
    sliced = {g for spec in layout.params for _, g in spec.sliced_axes}
    assert sliced == set(range(len(layout.group_sizes))), "every group slices some tensor"
    assert layout.classifier and layout.num_classes == CLASSES
    assert all(layout.spec(name).axis_groups[0] is None for name in layout.classifier)
    assert all(0 <= a < b < len(layout.group_sizes) for a, b in layout.adjacency)

    params = model.init(torch.Generator().manual_seed(0))
    assert list(params) == list(layout.names)
    for spec in layout.params:
        t = params[spec.name]
        assert tuple(t.shape) == spec.shape
        if spec.role == "norm_scale":
            assert torch.equal(t, torch.ones_like(t))
        elif spec.role == "norm_shift":
            assert torch.equal(t, torch.zeros_like(t))
        elif spec.role in FAN_IN_ROLES:
            assert spec.fan_in is not None and float(t.abs().max()) <= 1 / math.sqrt(spec.fan_in)
    again = model.init(torch.Generator().manual_seed(0))
    assert all(torch.equal(params[k], again[k]) for k in params)
    x = inputs(arch, i, (4,))
    assert model.forward(params, x).shape == (4, *targets(arch, i, (4,)).shape[1:], CLASSES)
    assert model.flops_per_sample(list(layout.group_sizes), shape) > 0


def client_batches(arch: str, i: int, model: ModelFamily, seed: int = 0, width: float = 0.5):
    """Three clients' sub-models of `width` (random index sets per group, stacked), padded batches
    x [3, 6, *shape] with masks of 6, 1 and 3 real samples (not a prefix), labels."""
    g = torch.Generator().manual_seed(seed)
    params = model.init(g)
    subs = [extract(params, model.layout, random_indices(model.layout, width, g)) for _ in range(3)]
    stacked = {name: torch.stack([s[name] for s in subs]) for name in model.layout.names}
    mask = torch.zeros(3, 6, dtype=torch.bool)
    mask[0] = True
    mask[1, 4] = True
    mask[2, [0, 2, 5]] = True
    return subs, stacked, inputs(arch, i, (3, 6), g), mask, targets(arch, i, (3, 6), g)


def per_client_loss(logits: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    """Sum over clients of each client's mean cross-entropy over its real samples (a sample's:
    the mean over its labels)."""
    per_sample = token_cross_entropy(logits, y, reduction="none").view(*mask.shape, -1).mean(dim=2)
    per_sample = torch.where(mask, per_sample, torch.zeros((), dtype=per_sample.dtype))
    return (per_sample.sum(dim=1) / mask.sum(dim=1)).sum()


def stacked_outputs(forward, stacked: dict[str, Tensor], x: Tensor, mask: Tensor, y: Tensor):
    leaves = {k: v.clone().requires_grad_(True) for k, v in stacked.items()}
    logits = forward(leaves, x, mask)
    grads = torch.autograd.grad(per_client_loss(logits, y, mask), list(leaves.values()))
    return logits.detach(), dict(zip(leaves, grads, strict=True))


@pytest.mark.parametrize("arch,i", CASE_IDS)
def test_reference_vmapped_and_stacked_forwards_and_gradients_agree(registry, float64, arch, i):
    model, shape = build(arch, i)
    subs, stacked, x, mask, y = client_batches(arch, i, model)
    beta = 0.5

    def vmapped(p, xs, m):
        return vmapped_forward(model, p, xs, m, beta=beta, train=True)

    forwards = {"vmapped": vmapped}
    hand_written = stacked_forward_of(model)
    if hand_written is not None:
        forwards["stacked"] = lambda p, xs, m: hand_written.forward_stacked(p, xs, m, beta=beta, train=True)
    results = {name: stacked_outputs(f, stacked, x, mask, y) for name, f in forwards.items()}
    # Padding changes nothing: other values in the padded rows, same logits and gradients.
    other = inputs(arch, i, (3, 6)) if CASES[arch][i][0].needs_tokens else 100 * torch.randn_like(x)
    noisy = torch.where(mask.view(*mask.shape, *([1] * len(shape))), x, other)
    padded_again = stacked_outputs(vmapped, stacked, noisy, mask, y)

    for c, sub in enumerate(subs):
        real = mask[c]
        leaves = {k: v.clone().requires_grad_(True) for k, v in sub.items()}
        logits = model.forward(leaves, x[c][real], beta=beta, train=True)
        loss = token_cross_entropy(logits, y[c][real])
        grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values())), strict=True))
        for name, (got_logits, got_grads) in [*results.items(), ("vmapped, other padding", padded_again)]:
            assert torch.allclose(got_logits[c][real], logits.detach(), atol=1e-10, rtol=1e-10), (name, c)
            for k in grads:
                assert torch.allclose(got_grads[k][c], grads[k], atol=1e-10, rtol=1e-10), (name, c, k)


# Literals that would mean a module picks tensors by their names: a parameter-name suffix, or the
# layer names the MLP and CNN happen to use (config keys such as "hidden" and "norm" are fine).
NAME_GUESS = re.compile(r"\.(weight|bias)$|^(out|norm|hidden)\d*\.|^(norm|hidden)\d+$")
FAMILY_MODULES = {"models/mlp.py", "models/cnn.py", "models/preresnet.py", "models/preresnet_stacked.py",
                  "models/transformer.py", "models/transformer_stacked.py", "models/layout.py"}  # families name tensors


def _string_literals(tree: ast.AST) -> Iterator[tuple[int, str]]:
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


STRING_PARSING = {"split", "rsplit", "partition", "rpartition", "startswith", "endswith", "removesuffix",
                  "removeprefix"}


def _name_parsing(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """Calls that take a spec's `.name` apart (`spec.name.rsplit(".", 1)`)."""
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in STRING_PARSING
                and isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "name"
                and "path" not in ast.unparse(node.func.value.value)):  # a file's name is no tensor's
            yield node.lineno, ast.unparse(node)


def name_guesses(source: str) -> list[str]:
    tree = ast.parse(source)
    return [*(f"{line}: {text!r}" for line, text in _string_literals(tree) if NAME_GUESS.search(text)),
            *(f"{line}: {call}" for line, call in _name_parsing(tree))]


def test_no_module_guesses_a_role_from_a_tensor_name():
    root = Path(fedbrb_fast.__file__).parent
    found = [f"{path.relative_to(root).as_posix()}:{guess}" for path in sorted(root.rglob("*.py"))
             if path.relative_to(root).as_posix() not in FAMILY_MODULES for guess in name_guesses(path.read_text())]
    assert not found, "tensor names outside the families' own modules:\n" + "\n".join(found)


def test_the_name_check_catches_a_guess():
    """The three guesses the interface replaced: a role from a name prefix (models/init.py), the
    classifier by name (engines/context.py), linear layers by a ".weight" suffix (training/batched.py)."""
    guesses = ('def f(spec, names):\n    """Names like out.weight in a docstring are fine."""\n'
               '    layer, kind = spec.name.rsplit(".", 1)\n'
               '    return {"out.bias": 1}, [n for n in names if n.endswith(".weight")]\n')
    assert len(name_guesses(guesses)) == 3
