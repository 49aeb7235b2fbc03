"""PreResNet-18's hand-written stacked forward (models/preresnet_stacked.py): the batched engine
through it, and through the vmapped functional forward, equals the reference engine per client
and after aggregation (float64 at 1e-9; unequal data sizes, so padded batches and idle steps;
mixed widths). tests/test_model_conformance.py compares its forward and gradients directly."""

from __future__ import annotations

import pytest
import torch
from test_engine_batched import SIZES, assert_same_clients, make_data

from fedbrb_fast.aggregation import aggregate, rule_for_method
from fedbrb_fast.engines import BatchedEngine, ReferenceEngine, RoundContext
from fedbrb_fast.models import FunctionalView, stacked_forward_of
from fedbrb_fast.models.functional import normalize
from fedbrb_fast.models.preresnet import PreResNet
from fedbrb_fast.models.preresnet_stacked import scaled_norm
from fedbrb_fast.plans import make_round_plans, shear_coefficients
from fedbrb_fast.profiling import PhaseTimer
from fedbrb_fast.training import LocalTraining


# Seconds each (a reference round and two batched rounds of a residual network): slow; the
# conformance test checks the stacked forward and its gradients in the fast suite.
@pytest.mark.slow
@pytest.mark.parametrize("norm,method", [("bn", "fedbrb"), ("bn", "heterofl"), ("bn", "fedrolex"), ("gn", "fedbrb"),
                                         ("none", "fd")])
def test_stacked_and_vmapped_paths_equal_the_reference_engine(float64, norm, method):
    model = PreResNet(2, [8, 8, 16, 16], 5, norm=norm, norm_groups=2)
    assert stacked_forward_of(model) is model and stacked_forward_of(FunctionalView(model)) is None
    data = make_data((2, 9, 9))
    params = model.init(torch.Generator().manual_seed(3))
    widths = [0.25, 0.5, 0.25, 1.0, 0.25, 0.5, 0.25, 0.5]
    plans = make_round_plans(method, 1, list(range(len(SIZES))), widths, group_sizes=model.layout.group_sizes,
                             num_blocks=4, seed=3, shear=shear_coefficients(model.layout))
    rule = rule_for_method(method, 0.3, 4)
    hp = LocalTraining(1, 8, 0.05, 0.9, 5e-4)
    ref = ReferenceEngine().train_round(RoundContext(1, 3, model, data, hp, "samples", False), plans, params,
                                        PhaseTimer())
    want = aggregate(params, model.layout, ref.updates, rule).params
    for family in (model, FunctionalView(model)):
        ctx = RoundContext(1, 3, family, data, hp, "samples", False)
        bat = BatchedEngine(3).train_round(ctx, plans, params, PhaseTimer())
        assert_same_clients(ref, bat, atol=1e-9, rtol=1e-9)
        got = aggregate(params, model.layout, bat.updates, rule).params
        for k, p in want.items():
            assert torch.allclose(got[k], p, atol=1e-9, rtol=1e-9), (family, k)


@pytest.mark.parametrize("kind", ["bn", "gn", "none"])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("pixels", [3, 1])
def test_the_scaler_folded_into_the_norm_epsilon_equals_scaling_the_activations(float64, kind, padded, pixels):
    """norm(h / beta) for clients side by side in the channels: the fused kernels take eps * beta^2
    instead of a divided copy of h; padded batches divide h and take the masked statistics. At 1x1
    pixels a GroupNorm of one channel per group (and the BatchNorm of a one-sample client) is a norm
    over one value: its shift exactly, as the reference computes it, gradients included."""
    g = torch.Generator().manual_seed(0)
    n, b, c, beta = 3, 5, 2, 0.25
    h = torch.randn(b, n * c, pixels, pixels, generator=g).contiguous(memory_format=torch.channels_last)
    h.requires_grad_(True)
    weight, bias = torch.rand(n, c, generator=g) + 0.5, torch.randn(n, c, generator=g)
    bias[:, 0] = 0.0  # the initial shift: a norm over one value lands on ReLU's kink
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    mask = torch.ones(n, b, dtype=torch.bool)
    if padded:
        mask[1, 1:] = False  # client 1 has one real sample
    got = scaled_norm(h, n, kind, weight, bias, 2, mask, scale=1 / beta, full_batches=not padded)
    # padded rows stay out of the loss, as in training
    upstream = torch.randn(got.shape, generator=g) * mask.T.repeat_interleave(c, dim=1).view(b, n * c, 1, 1)
    got_grads = torch.autograd.grad((got.relu() * upstream).sum(), (h, weight, bias), allow_unused=True)
    for i in range(n):
        real, own_channels = mask[i], slice(i * c, (i + 1) * c)
        own = h.detach()[real][:, own_channels].requires_grad_(True)
        w, s = weight.detach()[i].requires_grad_(True), bias.detach()[i].requires_grad_(True)
        want = normalize(own / beta, kind, w, s, 2)
        want_grads = torch.autograd.grad((want.relu() * upstream[real][:, own_channels]).sum(), (own, w, s),
                                         allow_unused=True)
        assert torch.allclose(got[real][:, own_channels], want, atol=1e-12, rtol=1e-12), i
        got_h, got_w, got_s = got_grads
        pairs = [(got_h[real][:, own_channels], want_grads[0])]
        if kind != "none":  # no affine parameters
            pairs += [(got_w[i], want_grads[1]), (got_s[i], want_grads[2])]
        for got_grad, want_grad in pairs:
            assert torch.allclose(got_grad, want_grad, atol=1e-12, rtol=1e-12), i
