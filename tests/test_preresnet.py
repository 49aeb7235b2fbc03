"""PreResNet-18 (models/preresnet.py) against a plain nn.Module written as HeteroFL writes its
pre-activation blocks (two per stage here, as SPEC 7 defines the model)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedbrb_fast.config import config_from_dict
from fedbrb_fast.models import build_model
from fedbrb_fast.models.preresnet import PreResNet as PreResNetFamily
from fedbrb_fast.models.preresnet import blocks, group_widths, preresnet_forward, preresnet_layout


class Scaler(nn.Module):
    def __init__(self, beta: float) -> None:
        super().__init__()
        self.beta = beta

    def forward(self, x):
        return x / self.beta if self.training else x


def make_norm(kind: str, channels: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(channels, track_running_stats=False)
    return nn.GroupNorm(2, channels) if kind == "gn" else nn.Identity()


class PreActBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, norm: str, beta: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = make_norm(norm, c_in), make_norm(norm, c_out)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.scaler = Scaler(beta)
        self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False) if stride != 1 or c_in != c_out else None

    def forward(self, x):
        out = F.relu(self.norm1(self.scaler(x)))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv2(F.relu(self.norm2(self.scaler(self.conv1(out)))))
        return out + shortcut


class PreResNet(nn.Module):
    def __init__(self, c_in: int, widths: list[int], classes: int, norm: str, beta: float) -> None:
        super().__init__()
        self.stem = nn.Conv2d(c_in, widths[0], 3, 1, 1, bias=False)
        layers, prev = [], widths[0]
        for s, w in enumerate(widths):
            for j in range(2):
                layers.append(PreActBlock(prev, w, 2 if j == 0 and s > 0 else 1, norm, beta))
                prev = w
        self.blocks = nn.Sequential(*layers)
        self.final_norm, self.scaler = make_norm(norm, prev), Scaler(beta)
        self.out = nn.Linear(prev, classes)

    def forward(self, x):
        h = self.blocks(self.stem(x))
        return self.out(F.relu(self.final_norm(self.scaler(h))).mean(dim=(2, 3)))


def module_params(module: PreResNet) -> dict[str, torch.Tensor]:
    """The module's tensors under the layout's names (block i of the Sequential is blocks(4)[i])."""
    prefixes = [b.prefix for b in blocks(4)]
    out = {}
    for name, p in module.named_parameters():
        if name.startswith("blocks."):
            _, i, rest = name.split(".", 2)
            name = f"{prefixes[int(i)]}.{rest}"
        out[name] = p.detach()
    return out


@pytest.mark.parametrize("norm", ["bn", "gn", "none"])
@pytest.mark.parametrize("train", [True, False])
def test_functional_forward_equals_the_module(norm, train):
    torch.manual_seed(0)
    widths, beta = [4, 8, 8, 16], 0.25
    module = PreResNet(3, widths, 10, norm, beta).double().train(train)
    for p in module.parameters():  # norm affine parameters away from 1 and 0
        nn.init.uniform_(p, -0.5, 0.5)
    params = module_params(module)
    layout = preresnet_layout(3, widths, 10, norm)
    assert set(params) == set(layout.names)
    assert all(tuple(params[s.name].shape) == s.shape for s in layout.params)
    x = torch.randn(5, 3, 9, 9, dtype=torch.float64)
    got = preresnet_forward(params, x, num_stages=4, norm=norm, norm_groups=2, scaler=True, beta=beta, train=train)
    assert torch.allclose(got, module(x), atol=1e-12)


def test_groups_streams_and_adjacency():
    layout = preresnet_layout(3, [64, 128, 256, 512], 100, "bn")
    # Network order, by the first tensor that writes a group: stream 0, its blocks' inner groups,
    # then per later stage the first block's inner group, the stage's stream, the second inner group.
    assert layout.group_sizes == (64,) * 3 + (128,) * 3 + (256,) * 3 + (512,) * 3
    streams = [b.out_stream for b in blocks(4)][::2]
    assert streams == [0, 4, 7, 10]
    pairs = {tuple(sorted(g for g in s.axis_groups[:2] if g is not None)) for s in layout.params}
    adjacent = {p for p in pairs if len(p) == 2}
    # Consecutive streams meet in the shortcut; a stage's first inner group meets both streams.
    assert {(0, 4), (4, 7), (7, 10), (0, 3), (3, 4)} <= adjacent
    assert (0, 1) in adjacent and (0, 2) in adjacent and (1, 2) not in adjacent
    assert not any(s.axis_groups[0] is not None and s.axis_groups[0] == s.axis_groups[1]
                   for s in layout.params if len(s.shape) > 1)  # no tensor sliced on both axes by one group
    # 11.2 M parameters, the module's.
    module = PreResNet(3, [64, 128, 256, 512], 100, "bn", 1.0)
    assert sum(torch.Size(s.shape).numel() for s in layout.params) == sum(p.numel() for p in module.parameters())


def test_flops_per_sample_counts_every_convolution():
    torch.manual_seed(0)
    widths, spatial = [4, 8, 8, 16], (9, 9)
    module = PreResNet(3, widths, 10, "none", 1.0)
    counted = []

    def hook(mod, inputs, output):
        counted.append(2 * output.numel() * mod.weight[0].numel())

    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            m.register_forward_hook(hook)
    module(torch.randn(1, 3, *spatial))
    family = PreResNetFamily(3, widths, 10)
    assert family.flops_per_sample(group_widths(widths), (3, *spatial)) == sum(counted)


def test_built_from_its_config_section_and_refusing_vector_inputs():
    cfg = config_from_dict({"model": {"arch": "preresnet18", "widths": [16, 32, 64, 128]},
                            "clients": {"widths": ["1/8"]}})
    model = build_model(cfg, (1, 28, 28), 10)  # MNIST-5k, the default data
    assert isinstance(model, PreResNetFamily) and model.batch_coupled and model.in_channels == 1
    assert list(model.layout.group_sizes) == cfg.model.group_sizes
    assert model.forward(model.init(torch.Generator().manual_seed(0)), torch.randn(3, 1, 28, 28)).shape == (3, 10)
    small = build_model(cfg.model_copy(update={"method": cfg.method.model_copy(update={"name": "fedavg_small"})}),
                        (1, 28, 28), 10)
    assert small.layout.group_sizes == (2,) * 3 + (4,) * 3 + (8,) * 3 + (16,) * 3  # fedavg_small: K = 8 narrower
    with pytest.raises(ValueError, match=r"model.arch: PreResNet-18 needs \(channels, height, width\) inputs"):
        build_model(cfg, (784,), 10)


@pytest.mark.parametrize(("groups", "stride", "channels_last"),
                         [(1, 2, False), (3, 2, True), (2, 1, True), (1, 3, False)])
def test_the_pointwise_conv_is_the_strided_1x1_convolution(groups, stride, channels_last):
    """Shortcut convolutions skip oneDNN's strided 1x1 backward (it hangs or corrupts the heap on AVX2
    hosts); the float64 reference runs torch's native convolution."""
    from fedbrb_fast.models.preresnet_stacked import pointwise_conv

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 2 * groups, 9, 10, generator=g)
    w = torch.randn(3 * groups, 2, 1, 1, generator=g)
    dy = torch.randn(4, 3 * groups, -(-9 // stride), -(-10 // stride), generator=g)
    got_x = (x.to(memory_format=torch.channels_last) if channels_last else x.clone()).requires_grad_()
    got_w = w.clone().requires_grad_()
    got = pointwise_conv(got_x, got_w, stride, groups=groups)
    got.backward(dy)
    want_x, want_w = x.double().requires_grad_(), w.double().requires_grad_()
    want = torch.nn.functional.conv2d(want_x, want_w, stride=stride, groups=groups)
    want.backward(dy.double())
    for a, b in ((got, want), (got_x.grad, want_x.grad), (got_w.grad, want_w.grad)):
        assert a is not None and b is not None
        torch.testing.assert_close(a, b.float(), rtol=1e-5, atol=1e-5)
