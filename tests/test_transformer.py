"""The Transformer family: its layout (SPEC 2 and 7), causality, agreement with an independent
nn.Module written as peer code writes it (bench/plain_modules.py, scalers where HeteroFL and
FedRolex put them), and its configuration errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from fedbrb_fast.config import ConfigError, TransformerConfig, config_from_dict
from fedbrb_fast.models import Transformer, build_family, extract
from fedbrb_fast.plans import shear_coefficients

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from plain_modules import PlainTransformer  # noqa: E402

VOCAB = 11


def tiny(**kw) -> Transformer:
    args = {"context": 9, "dim": 16, "heads": 4, "mlp": 12, "layers": 2, **kw}
    return Transformer(VOCAB, **args)


def test_layout_groups_segments_and_adjacency():
    model = tiny()
    layout = model.layout
    assert layout.group_sizes == (16, 16, 12, 16, 12)
    assert [layout.segments(g) for g in range(5)] == [1, 4, 1, 4, 1]
    assert layout.segment_size(1) == 4  # the head dimension
    # the model dimension meets every attention and MLP group; those never meet each other
    assert layout.adjacency == {(0, g) for g in range(1, 5)}
    assert layout.spec("layer1.q.weight").axis_groups == (3, 0)
    assert layout.spec("layer1.o.weight").axis_groups == (0, 3)
    assert layout.spec("layer0.fc2.weight").axis_groups == (0, 2)
    # the vocabulary is never sliced
    for name in ("embed.weight", "out.weight", "out.bias"):
        assert layout.spec(name).axis_groups[0] is None
    assert layout.classifier == ("out.weight", "out.bias") and layout.num_classes == VOCAB
    shear = shear_coefficients(layout)
    assert len({shear[0], *shear[1:]}) == 2 and all(c == shear[1] for c in shear[1:])


def test_a_prediction_never_reads_a_later_token():
    model = tiny()
    params = model.init(torch.Generator().manual_seed(0))
    x = torch.randint(0, VOCAB, (3, 9), generator=torch.Generator().manual_seed(1))
    changed = x.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % VOCAB
    a, b = model.forward(params, x), model.forward(params, changed)
    assert torch.equal(a[:, :5], b[:, :5]) and not torch.allclose(a[:, 5:], b[:, 5:])
    # shorter sequences read the first positions of the table
    assert torch.allclose(model.forward(params, x[:, :4]), a[:, :4], atol=1e-6)


def _plain(model: Transformer, params: dict[str, torch.Tensor], width: float) -> PlainTransformer:
    widths = [params["embed.weight"].shape[1]] + [
        params[f"layer{i}.{t}.weight"].shape[0] for i in range(model.layers) for t in ("q", "fc1")]
    net = PlainTransformer(model, widths, width)
    net.load_state_dict(params)
    return net


@pytest.mark.parametrize("scaler", [True, False])
@pytest.mark.parametrize("width,train", [(1.0, False), (0.5, True), (0.25, True), (0.5, False)])
def test_equals_the_peer_style_module_at_full_and_sub_widths(float64, scaler, width, train):
    """Sub-models keep every head, each narrower (the same channels of every head's dimension)."""
    model = tiny(scaler=scaler)
    params = model.init(torch.Generator().manual_seed(0))
    layout = model.layout
    idx = []
    for g in range(len(layout.group_sizes)):
        d = layout.segment_size(g)
        own = torch.randperm(d, generator=torch.Generator().manual_seed(g))[: int(width * d)].sort().values
        idx.append(torch.cat([r * d + own for r in range(layout.segments(g))]))
    sub = extract(params, layout, idx)
    net = _plain(model, sub, width).train(train)
    x = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(2))
    got = model.forward(sub, x, beta=width, train=train)
    assert torch.allclose(got, net(x), atol=1e-10, rtol=1e-10)


def test_the_scaler_changes_training_outputs_only():
    model = tiny()
    params = model.init(torch.Generator().manual_seed(0))
    x = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(2))
    assert torch.equal(model.forward(params, x, beta=0.5), model.forward(params, x, beta=0.5, train=False))
    assert not torch.allclose(model.forward(params, x, beta=0.5, train=True), model.forward(params, x))


def test_inputs_the_model_cannot_read_are_refused():
    cfg = TransformerConfig(layers=1, dim=8, heads=2, mlp=8, context=6)
    with pytest.raises(ValueError, match="model.context: sequences of 7 tokens are longer than the model's context"):
        build_family(cfg, (7,), VOCAB)
    with pytest.raises(ValueError, match="token sequences"):
        build_family(cfg, (1, 6, 6), VOCAB)


@pytest.mark.parametrize("model,widths,field,message", [
    ({"dim": 30, "heads": 4}, ["1/2"], "model.heads", "4 heads do not divide model.dim = 30"),
    ({"dim": 32, "heads": 8}, ["1/8"], "model.heads", "head dimension dim / heads = 4 is not divisible by K = 8"),
    ({"dim": 36, "heads": 2}, ["1/8"], "model.dim", "36 is not divisible by K = 8"),
    ({"mlp": 20}, ["1/8"], "model.mlp", "20 is not divisible by K = 8"),
])
def test_sizes_that_do_not_split_are_refused_naming_the_field(model, widths, field, message):
    raw = {"model": {"arch": "transformer", "layers": 1, "dim": 64, "heads": 2, "mlp": 64, **model},
           "clients": {"widths": widths}}
    with pytest.raises(ConfigError, match=message) as err:
        config_from_dict(raw)
    assert field in str(err.value)


def test_fedavg_small_narrows_every_head_and_keeps_the_heads():
    cfg = TransformerConfig(layers=2, dim=64, heads=4, mlp=128).narrowed(8)
    assert (cfg.dim, cfg.heads, cfg.mlp, cfg.head_dim) == (8, 4, 16, 2)


def test_a_sampled_continuation_follows_the_model():
    from fedbrb_fast.training.generate import sample_continuation

    model = tiny()
    params = model.init(torch.Generator().manual_seed(0))
    # a model that always predicts token 3: zero weights to the logits, one bias up
    params["out.weight"] = torch.zeros_like(params["out.weight"])
    params["out.bias"] = torch.zeros(VOCAB)
    params["out.bias"][3] = 50.0
    prompt = torch.tensor([1, 2, 5])
    out = sample_continuation(model, params, prompt, 12, context=9, generator=torch.Generator().manual_seed(0))
    assert out.tolist() == [3] * 12  # longer than the context: the window slides
    greedy = sample_continuation(model, model.init(torch.Generator().manual_seed(0)), prompt, 5, context=9,
                                 temperature=0)
    again = sample_continuation(model, model.init(torch.Generator().manual_seed(0)), prompt, 5, context=9,
                                temperature=0)
    assert torch.equal(greedy, again) and greedy.dtype == torch.int64 and len(greedy) == 5
    with pytest.raises(ValueError, match="prompt"):
        sample_continuation(model, params, torch.tensor([], dtype=torch.int64), 3, context=9)
