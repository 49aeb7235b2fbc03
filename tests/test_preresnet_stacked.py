"""PreResNet-18's hand-written stacked forward (models/preresnet_stacked.py): its norms with the
scaler folded into epsilon. tests/test_model_conformance.py compares the whole forward and its
gradients with the reference and vmapped forwards; tests/test_preresnet_engines.py trains through it
against the reference engine."""

from __future__ import annotations

import pytest
import torch

from fedbrb_fast.models.functional import normalize
from fedbrb_fast.models.preresnet_stacked import scaled_norm


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
