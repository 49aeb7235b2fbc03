import pytest
import torch

from fedbrb_fast.config import config_from_dict
from fedbrb_fast.models import CNN, MLP, build_model, extract, full_indices, gather_tensor
from fedbrb_fast.models.functional import static_batch_norm
from fedbrb_fast.models.layout import ModelLayout, ParamSpec
from fedbrb_fast.plans import make_round_plans

NORMS = ["none", "bn", "gn"]


def models(norm):
    return [MLP(20, [8, 16], 5, norm=norm, norm_groups=2), CNN(3, [8, 16, 8], 5, norm=norm, norm_groups=2)]


def inputs(model, n=6):
    g = torch.Generator().manual_seed(0)
    return torch.randn((n, 20) if isinstance(model, MLP) else (n, 3, 12, 12), generator=g)


@pytest.mark.parametrize("norm", NORMS)
def test_forward_shapes_and_layout(norm):
    for model in models(norm):
        params = model.init(torch.Generator().manual_seed(0))
        assert set(params) == set(model.layout.names)
        for spec in model.layout.params:
            assert tuple(params[spec.name].shape) == spec.shape
        assert model.forward(params, inputs(model)).shape == (6, 5)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("method", ["fedbrb", "fedrolex", "heterofl", "fd"])
def test_sub_models_run_on_any_plan(norm, method):
    for model in models(norm):
        params = model.init(torch.Generator().manual_seed(0))
        for plan in make_round_plans(method, 2, [0, 1, 2], [0.25, 0.5, 0.75], group_sizes=model.layout.group_sizes,
                                     num_blocks=4, seed=0):
            sub = extract(params, model.layout, plan.indices)
            out = model.forward(sub, inputs(model), beta=plan.width, train=True)
            assert out.shape == (6, 5) and torch.isfinite(out).all()
            assert sub["hidden0.weight"].shape[0] == len(plan.indices[0])


def test_full_plan_extracts_the_global_model():
    model = MLP(20, [8, 16], 5, norm="bn")
    params = model.init(torch.Generator().manual_seed(0))
    sub = extract(params, model.layout, full_indices(model.layout))
    assert all(torch.equal(sub[k], params[k]) for k in params)
    sub["out.bias"] += 1  # a copy, never a view
    assert not torch.equal(sub["out.bias"], params["out.bias"])


def test_gather_matches_manual_slicing():
    model = CNN(3, [8, 16], 4, norm="bn")
    params = model.init(torch.Generator().manual_seed(1))
    idx = (torch.tensor([6, 7, 0, 1]), torch.tensor([3, 1]))
    sub = extract(params, model.layout, idx)
    assert torch.equal(sub["hidden1.weight"], params["hidden1.weight"][[3, 1]][:, [6, 7, 0, 1]])
    assert torch.equal(sub["hidden0.weight"], params["hidden0.weight"][[6, 7, 0, 1]])
    assert torch.equal(sub["out.weight"], params["out.weight"][:, [3, 1]])
    assert torch.equal(sub["norm0.bias"], params["norm0.bias"][[6, 7, 0, 1]])
    assert torch.equal(gather_tensor(params["out.bias"], model.layout.spec("out.bias"), idx), params["out.bias"])


def test_scaler_divides_hidden_activations_only_in_training():
    model = MLP(4, [3], 2, norm="none", scaler=True)
    p = {"hidden0.weight": torch.eye(3, 4), "hidden0.bias": torch.zeros(3),
         "out.weight": torch.ones(2, 3), "out.bias": torch.zeros(2)}
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert torch.allclose(model.forward(p, x, beta=0.25, train=True), torch.full((1, 2), 24.0))
    assert torch.allclose(model.forward(p, x, beta=0.25, train=False), torch.full((1, 2), 6.0))
    plain = MLP(4, [3], 2, norm="none", scaler=False)
    assert torch.allclose(plain.forward(p, x, beta=0.25, train=True), torch.full((1, 2), 6.0))


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("shape", [(7, 5, 3, 3), (7, 5), (1, 5, 3, 3), (2, 5)])
def test_static_batch_norm_uses_batch_statistics(shape, fused):
    h = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    w, b = torch.rand(5, dtype=torch.float64) + 0.5, torch.randn(5, dtype=torch.float64)
    dims = [0, *range(2, h.dim())]
    view = [1, 5] + [1] * (h.dim() - 2)
    mean, var = h.mean(dims, keepdim=True), h.var(dims, unbiased=False, keepdim=True)
    ref = (h - mean) / (var + 1e-5).sqrt() * w.view(view) + b.view(view)
    out = static_batch_norm(h, w, b, fused=fused)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(torch.autograd.grad(out.square().sum(), h)[0],
                               torch.autograd.grad(ref.square().sum(), h)[0])


@pytest.mark.parametrize("fused", [False, True])
def test_static_batch_norm_of_a_single_vector_is_the_bias(fused):
    w, b = torch.rand(5) + 0.5, torch.randn(5)
    single = static_batch_norm(torch.randn(1, 5), w, b, fused=fused)  # batch of one: no error, bias out
    assert torch.allclose(single, b.expand(1, 5))


def test_init_is_seeded_and_bounded():
    m = MLP(50, [10], 3)
    a = m.init(torch.Generator().manual_seed(5))
    b = m.init(torch.Generator().manual_seed(5))
    c = m.init(torch.Generator().manual_seed(6))
    assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(a["hidden0.weight"], c["hidden0.weight"])
    assert a["hidden0.weight"].abs().max() <= 50 ** -0.5
    bn = MLP(5, [4], 2, norm="bn").init(torch.Generator().manual_seed(0))
    assert torch.equal(bn["norm0.weight"], torch.ones(4)) and torch.equal(bn["norm0.bias"], torch.zeros(4))


def test_layout_axis_groups():
    layout = CNN(3, [8, 16], 10, norm="bn").layout
    assert layout.group_sizes == (8, 16)
    assert layout.spec("hidden0.weight").axis_groups == (0, None, None, None)
    assert layout.spec("hidden1.weight").axis_groups == (1, 0, None, None)
    assert layout.spec("out.weight").axis_groups == (None, 1)
    assert layout.spec("out.bias").sliced_axes == ()
    with pytest.raises(ValueError, match="does not match"):
        ModelLayout((4,), (ParamSpec("w", (5, 2), (0, None)),))
    with pytest.raises(ValueError, match="only axes 0 and 1"):
        ParamSpec("w", (2, 2, 2), (None, None, 0))


def test_layout_roles_classifier_and_adjacency():
    layout = CNN(3, [8, 16, 4], 10, norm="bn").layout
    assert [layout.spec(n).role for n in ("hidden1.weight", "hidden1.bias", "norm1.weight", "norm1.bias")] == [
        "weight", "bias", "norm_scale", "norm_shift"]
    assert layout.spec("hidden1.weight").fan_in == 8 * 9 and layout.spec("out.bias").fan_in == 4
    assert layout.classifier == ("out.weight", "out.bias") and layout.num_classes == 10
    assert layout.adjacency == {(0, 1), (1, 2)}  # a chain: consecutive groups only
    # A stream (group 0) read by two branches and one tensor on the same group twice (not adjacent).
    branchy = ModelLayout((4, 6, 8), (ParamSpec("a", (6, 4), (1, 0)), ParamSpec("b", (4, 8), (0, 2)),
                                      ParamSpec("c", (8, 8), (2, 2)), ParamSpec("d", (6,), (1,))))
    assert branchy.adjacency == {(0, 1), (0, 2)}
    with pytest.raises(ValueError, match="no classifier"):
        _ = branchy.num_classes


@pytest.mark.parametrize("build,message", [
    (lambda: ParamSpec("w", (4, 3), (0, None), "weight"), "w: a weight needs its fan-in"),
    (lambda: ParamSpec("b", (4,), (0,), "bias", fan_in=0), "b: a bias needs its fan-in"),
    (lambda: ParamSpec("w", (4, 3), (0, None), "kernel", fan_in=3), "w: unknown role 'kernel'"),  # type: ignore
    (lambda: ModelLayout((4,), (ParamSpec("w", (4,), (0,)), ParamSpec("w", (4,), (0,)))), "names repeat: \\['w'\\]"),
    (lambda: ModelLayout((4,), (ParamSpec("w", (4,), (0,)),), classifier=("head",)), "no tensor 'head'"),
    (lambda: ModelLayout((4,), (ParamSpec("w", (4, 2), (0, None)),), classifier=("w",)), "class axis"),
    (lambda: ModelLayout((4,), (ParamSpec("w", (3, 4), (None, 0)), ParamSpec("b", (2,), (None,))),
                         classifier=("w", "b")), "disagree on the number of classes"),
])
def test_bad_specs_and_layouts_are_refused(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_init_needs_a_role():
    from fedbrb_fast.models.init import init_params

    with pytest.raises(ValueError, match="w: no role"):
        init_params(ModelLayout((4,), (ParamSpec("w", (4,), (0,)),)), torch.Generator())


def test_build_model_from_config():
    cfg = config_from_dict({"model": {"arch": "cnn", "hidden": [64, 128], "scale": 0.5, "norm": "bn"},
                            "clients": {"widths": ["1/8"]}})
    m = build_model(cfg, (1, 28, 28), 10)
    assert isinstance(m, CNN) and m.layout.group_sizes == (32, 64)
    small = build_model(config_from_dict({**cfg.model_dump(), "method": {"name": "fedavg_small"}}), (1, 28, 28), 10)
    assert small.layout.group_sizes == (4, 8)
    mlp = build_model(config_from_dict({"model": {"hidden": [64]}}), (1, 8, 8), 10)
    assert isinstance(mlp, MLP) and mlp.layout.spec("hidden0.weight").shape == (64, 64)
    with pytest.raises(ValueError, match="CNN needs"):
        build_model(cfg, (40,), 10)


def test_flops_per_sample():
    assert MLP(784, [1024, 1024], 10).flops_per_sample([128, 128], (784,)) == 2 * (784 * 128 + 128 * 128 + 128 * 10)
    cnn_flops = 2 * (28 * 28 * 4 * 9 + 14 * 14 * 8 * 4 * 9 + 8 * 10)
    assert CNN(1, [4, 8], 10).flops_per_sample([4, 8], (1, 28, 28)) == cnn_flops


def test_group_norm_matches_torch_and_accepts_one_sample():
    from fedbrb_fast.models.functional import group_norm

    h = torch.randn(5, 8, 3, 3)
    w, b = torch.rand(8) + 0.5, torch.randn(8)
    assert torch.allclose(group_norm(h, w, b, 4), torch.nn.functional.group_norm(h, 4, w, b), atol=1e-5)
    one = group_norm(torch.randn(1, 8), w, b, 8)  # one value per group: normalizes to the shift
    assert torch.allclose(one, b.expand(1, 8))
