"""The batched engine against the reference loop on the same plans, data and randomness."""

import os

import pytest
import torch

from fedbrb_fast.aggregation import ClientBatch, aggregate, rule_for_method
from fedbrb_fast.config import config_from_dict
from fedbrb_fast.data import FederatedData
from fedbrb_fast.engines import BatchedEngine, ReferenceEngine, RoundContext, Simulation, width_chunks
from fedbrb_fast.models import CNN, MLP
from fedbrb_fast.models.layout import extract
from fedbrb_fast.models.stacked import DistinctSlices, SliceSet, gather_slices, gather_stacked
from fedbrb_fast.plans import make_round_plans
from fedbrb_fast.profiling import PhaseTimer
from fedbrb_fast.seeding import STREAM_TRAIN, torch_generator
from fedbrb_fast.training import LocalTraining, minibatches
from fedbrb_fast.training.batched import build_schedule
from fedbrb_fast.training.data_span_linear import use_data_span

SIZES = [1, 7, 13, 20, 33, 9, 16, 4]  # unequal: a single sample, short last batches, idle steps


def make_data(input_shape, sizes=SIZES, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    x = torch.randn(n, *input_shape, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    perm = torch.randperm(n, generator=g)
    bounds = torch.tensor([0, *sizes]).cumsum(0)
    idx = tuple(perm[bounds[i]:bounds[i + 1]].sort().values for i in range(len(sizes)))
    return FederatedData(x, y, x[:20], y[:20], classes, tuple(input_shape), idx)


def model_and_data(arch, norm):
    if arch == "mlp":
        return MLP(12, [8, 16], 5, norm=norm, norm_groups=2), make_data((12,))
    if arch == "mlp_wide":  # inputs wider than twice any client's data: the data-span input layer
        assert use_data_span(72, max(SIZES))
        return MLP(72, [8, 16], 5, norm=norm, norm_groups=2), make_data((72,))
    return CNN(2, [8, 16, 8], 5, norm=norm, norm_groups=2), make_data((2, 9, 9))


def run_both(model, data, method, *, label_mask=False, clip=None, widths=(0.25, 0.5, 0.25, 0.75, 0.25, 0.5, 0.25, 1.0),
             max_clients=256, epochs=2, seed=5, momentum=0.9, cpu_trainer="auto"):
    params = model.init(torch.Generator().manual_seed(seed))
    clients = list(range(len(SIZES)))
    plans = make_round_plans(method, 1, clients, list(widths), group_sizes=model.layout.group_sizes, num_blocks=4,
                             seed=seed)
    ctx = RoundContext(round_idx=1, seed=seed, model=model, data=data,
                       local=LocalTraining(epochs, 8, 0.05, momentum, 5e-4, clip), weighting="samples",
                       label_masking=label_mask)
    ref = ReferenceEngine().train_round(ctx, plans, params, PhaseTimer())
    bat = BatchedEngine(max_clients, cpu_trainer=cpu_trainer).train_round(ctx, plans, params, PhaseTimer())
    return params, ref, bat


def per_client(trained):
    out = {}
    for item in trained.updates:
        for u in (item.unbind() if isinstance(item, ClientBatch) else [item]):
            out[u.client] = u
    return out


def assert_same_clients(ref, bat, atol=2e-5, rtol=1e-4):
    r, b = per_client(ref), per_client(bat)
    assert sorted(r) == sorted(b)
    for c in r:
        assert r[c].weight == b[c].weight
        assert all(torch.equal(x, y) for x, y in zip(r[c].indices, b[c].indices, strict=True))
        for name, t in r[c].params.items():
            gap = (t - b[c].params[name]).abs().max()
            assert torch.allclose(t, b[c].params[name], atol=atol, rtol=rtol), (c, name, gap)
        for name, m in r[c].masks.items():
            assert torch.equal(m, b[c].masks[name])
        assert ref.train_losses[c] == pytest.approx(bat.train_losses[c], rel=1e-4, abs=1e-5)


def assert_rounds_match(model, data, method, widths, *, shear=None):
    """Two rounds (the second with clipping and label masking) on the reference and the batched
    engine (3 clients per chunk) from the same start: per client and after aggregation, to 1e-9
    (callers run in float64)."""
    rule = rule_for_method(method, 0.3, 4)
    ref_params = bat_params = model.init(torch.Generator().manual_seed(5))
    for round_idx in (1, 2):
        plans = make_round_plans(method, round_idx, list(range(len(SIZES))), widths,
                                 group_sizes=model.layout.group_sizes, num_blocks=4, seed=5, shear=shear,
                                 group_segments=model.layout.group_segments)
        ctx = RoundContext(round_idx=round_idx, seed=5, model=model, data=data,
                           local=LocalTraining(2, 8, 0.05, 0.9, 5e-4, 0.5 if round_idx == 2 else None),
                           weighting="samples", label_masking=round_idx == 2)
        ref = ReferenceEngine().train_round(ctx, plans, ref_params, PhaseTimer())
        bat = BatchedEngine(3).train_round(ctx, plans, bat_params, PhaseTimer())
        assert_same_clients(ref, bat, atol=1e-9, rtol=1e-9)
        ref_params = aggregate(ref_params, model.layout, ref.updates, rule).params
        bat_params = aggregate(bat_params, model.layout, bat.updates, rule).params
        for k in ref_params:
            assert torch.allclose(ref_params[k], bat_params[k], atol=1e-9, rtol=1e-9), (round_idx, k)


@pytest.fixture(params=[torch.float32, torch.float64], ids=["f32", "f64"])
def dtype(request):
    """float64 shows the batched arithmetic is the reference's (agreement to 1e-9); float32 that
    its rounding stays small (two epochs of SGD amplify summation-order differences to ~3e-5)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(request.param)
    yield request.param
    torch.set_default_dtype(previous)


@pytest.mark.parametrize("method", ["fedbrb", "fedrolex", "heterofl", "fd", "fedavg"])
@pytest.mark.parametrize("arch,norm,trainer", [
    # ReLU chains (no norm) train client-major by default; "stacked" keeps them on the step-major path.
    ("mlp", "none", "auto"), ("mlp", "none", "stacked"), ("mlp", "bn", "auto"), ("mlp", "gn", "auto"),
    ("mlp_wide", "none", "auto"), ("mlp_wide", "none", "stacked"), ("mlp_wide", "bn", "auto"),
    ("mlp_wide", "gn", "auto"),
    *(pytest.param("cnn", norm, "auto", marks=pytest.mark.slow) for norm in ("none", "bn", "gn"))])
def test_per_client_training_and_aggregate_match_reference(method, arch, norm, trainer, dtype):
    model, data = model_and_data(arch, norm)
    params, ref, bat = run_both(model, data, method, cpu_trainer=trainer)
    assert all(p.dtype == dtype for p in params.values())
    atol, rtol = (5e-5, 1e-4) if dtype == torch.float32 else (1e-9, 1e-9)
    assert_same_clients(ref, bat, atol=atol, rtol=rtol)
    rule = rule_for_method(method, 0.3, 4)
    a = aggregate(params, model.layout, ref.updates, rule).params
    b = aggregate(params, model.layout, bat.updates, rule).params
    for name in a:
        assert torch.allclose(a[name], b[name], atol=atol, rtol=rtol), name


@pytest.mark.parametrize("arch", ["mlp", "mlp_wide", pytest.param("cnn", marks=pytest.mark.slow)])
def test_label_masking_and_clipping_match_reference(arch):
    model, data = model_and_data(arch, "bn")
    _, ref, bat = run_both(model, data, "fedbrb", label_mask=True, clip=0.05)
    assert_same_clients(ref, bat)


@pytest.mark.parametrize("arch", ["mlp", "mlp_wide", "cnn"])
def test_sgd_without_momentum_matches_reference(arch):
    model, data = model_and_data(arch, "gn")
    _, ref, bat = run_both(model, data, "fedrolex", momentum=0.0, clip=0.5)
    assert_same_clients(ref, bat)


def test_chunking_changes_nothing():
    model, data = model_and_data("mlp", "bn")
    _, _, whole = run_both(model, data, "fd")
    _, _, chunked = run_both(model, data, "fd", max_clients=2)
    assert len(chunked.updates) > len(whole.updates)
    a, b = per_client(whole), per_client(chunked)
    for c in a:
        for name in a[c].params:
            assert torch.allclose(a[c].params[name], b[c].params[name], atol=1e-6)


def test_width_chunks_group_equal_shapes():
    plans = make_round_plans("fedbrb", 0, list(range(7)), [0.25, 0.5, 0.25, 0.5, 0.25, 0.25, 1.0],
                             group_sizes=[8, 8], num_blocks=4, seed=0)
    steps = {c: 1 + c % 3 for c in range(7)}
    chunks = width_chunks(plans, 2, steps)
    for chunk in chunks:
        assert [steps[p.client] for p in chunk] == sorted((steps[p.client] for p in chunk), reverse=True)
    assert sorted(len(c) for c in chunks) == [1, 2, 2, 2]  # widths 1/4 x4, 1/2 x2, 1 x1
    for chunk in chunks:
        assert len(chunk) <= 2 and len({p.width for p in chunk}) == 1
    assert sorted(p.client for c in chunks for p in c) == list(range(7))


def test_schedule_reproduces_reference_minibatches():
    data = make_data((3,))
    clients = [4, 2, 0]  # 33, 13 and 1 samples: non-increasing step counts
    rows = [data.client_indices[c] for c in clients]
    sched = build_schedule(rows, 8, 2, seed=9, round_idx=3, clients=clients)
    for i, c in enumerate(clients):
        ref = minibatches(len(rows[i]), 8, 2, torch_generator(9, STREAM_TRAIN, 3, c))
        assert sum(1 for k in sched.active if k > i) == len(ref)
        for s, pos in enumerate(ref):
            assert torch.equal(sched.rows[s, i][sched.mask[s, i]], rows[i][pos])
            assert torch.equal(sched.positions[s, i][sched.mask[s, i]], pos)
        assert torch.equal(sched.samples[i, : sched.counts[i]], rows[i])
        assert not sched.mask[len(ref):, i].any()
    assert sched.active == [3, 3, 2, 2] + [1] * 6  # 2, 4 and 10 steps: idle clients drop off the end
    with pytest.raises(ValueError, match="non-increasing"):
        build_schedule(rows[::-1], 8, 2, seed=9, round_idx=3, clients=clients[::-1])


def test_gather_stacked_equals_per_client_extract():
    model = CNN(3, [8, 12], 4, norm="bn")
    params = model.init(torch.Generator().manual_seed(0))
    plans = make_round_plans("fd", 0, [0, 1, 2], [0.5] * 3, group_sizes=model.layout.group_sizes, num_blocks=4, seed=1)
    idx = tuple(torch.stack([p.indices[g] for p in plans]) for g in range(2))
    for spec in model.layout.params:
        stacked = gather_stacked(params[spec.name], spec, idx)
        for i, p in enumerate(plans):
            assert torch.equal(stacked[i], extract(params, model.layout, p.indices)[spec.name])
        single = gather_stacked(params[spec.name], spec, tuple(ix[:1] for ix in idx))
        assert single.untyped_storage().data_ptr() != params[spec.name].untyped_storage().data_ptr()


@pytest.mark.parametrize("method", ["fedbrb", "fedrolex", "fd"])
def test_gather_slices_shares_equal_slices(method):
    model = MLP(10, [16, 16], 3)
    params = model.init(torch.Generator().manual_seed(0))
    plans = make_round_plans(method, 2, list(range(12)), [0.25] * 12, group_sizes=model.layout.group_sizes,
                             num_blocks=4, seed=1)
    idx = tuple(torch.stack([p.indices[g] for p in plans]) for g in range(2))
    memo: DistinctSlices = {}  # shared by every tensor, as the engine gathers them
    for spec in model.layout.params:
        slices = gather_slices(params[spec.name], spec, idx)
        assert torch.equal(slices.stacked(), gather_stacked(params[spec.name], spec, idx))
        memoized = gather_slices(params[spec.name], spec, idx, memo)
        assert torch.equal(memoized.unique, slices.unique) and torch.equal(memoized.of_client, slices.of_client)
        groups = [g for g in spec.axis_groups if g is not None]
        distinct = {tuple(torch.cat([idx[g][i] for g in groups]).tolist()) if groups else () for i in range(12)}
        assert len(slices.unique) == len(distinct)
    assert set(memo) == {tuple(g for g in spec.axis_groups if g is not None) for spec in model.layout.params} - {()}
    shared = len(gather_slices(params["hidden1.weight"], model.layout.spec("hidden1.weight"), idx).unique)
    assert shared == 1 if method == "fedrolex" else 1 < shared <= 12


@pytest.mark.parametrize("mu,wd", [(0.9, 5e-4), (0.0, 0.0), (0.5, 0.1)])
def test_data_span_weight_follows_explicit_sgd(mu, wd):
    from fedbrb_fast.training.data_span_linear import DataSpanLinearWeight

    g = torch.Generator().manual_seed(0)
    n, out_f, in_f, m, b = 3, 6, 9, 4, 2
    w0 = torch.randn(2, out_f, in_f, generator=g, dtype=torch.float64)
    shared = SliceSet(w0, torch.tensor([1, 0, 1]))
    samples = torch.randn(n, m, in_f, generator=g, dtype=torch.float64)
    samples[2, 3:] = 0  # client 2 holds 3 samples
    hp = LocalTraining(1, b, 0.1, mu, wd)
    w, buf = shared.stacked(), torch.zeros(n, out_f, in_f, dtype=torch.float64)
    span = DataSpanLinearWeight(shared, samples)
    bias = torch.randn(n, out_f, generator=g, dtype=torch.float64)
    for k in (3, 3, 2, 1, 1):  # clients drop off the end; samples repeat across steps
        pos = torch.randint(0, 3, (k, b), generator=g)
        x = samples[:k].gather(1, pos.unsqueeze(2).expand(k, b, in_f))
        expected = torch.baddbmm(bias[:k].unsqueeze(1), x, w[:k].transpose(1, 2))
        assert torch.allclose(span.forward(pos, bias[:k]), expected, atol=1e-10)
        dy = torch.randn(k, b, out_f, generator=g, dtype=torch.float64)
        grad = torch.bmm(dy.transpose(1, 2), x)
        assert torch.allclose(span.grad_sq_norm(pos, dy), grad.square().sum(dim=(1, 2)), atol=1e-10)
        grad += wd * w[:k]
        buf[:k] = mu * buf[:k] + grad
        w[:k] -= 0.1 * buf[:k]
        span.step(pos, dy, hp)
    assert torch.allclose(span.materialize(), w, atol=1e-10)


@pytest.mark.parametrize("method,arch,norm", [("fedbrb", "mlp", "bn"), ("fedrolex", "mlp", "none"),
                                              pytest.param("fd", "cnn", "gn", marks=pytest.mark.slow)])
def test_metrics_over_several_rounds_match(tiny_cfg_dict, method, arch, norm):
    raw = {**tiny_cfg_dict, "rounds": 3, "method": {"name": method, "lam": 0.5},
           "model": {"arch": arch, "hidden": [16, 16], "norm": norm, "norm_groups": 4},
           "data": {"dataset": "digits", "partition": "dirichlet", "dirichlet_alpha": 0.5}}
    runs = {}
    for engine in ("reference", "batched"):
        sim = Simulation(config_from_dict({**raw, "train": {**raw["train"], "engine": engine}}))
        runs[engine] = ([sim.run_round() for _ in range(3)], sim.params)
    (ra, pa), (rb, pb) = runs["reference"], runs["batched"]
    for x, y in zip(ra, rb, strict=True):
        assert x.accuracy == pytest.approx(y.accuracy, abs=0.01)
        assert x.loss == pytest.approx(y.loss, rel=1e-3)
        assert x.train_loss == pytest.approx(y.train_loss, rel=1e-3)
    for k in pa:
        assert torch.allclose(pa[k], pb[k], atol=1e-4, rtol=1e-3), k


@pytest.mark.parametrize("of_client", [[0, 0, 0, 0, 1, 1, 1, 1], [0, 1, 2, 3, 4, 5, 6, 7]],
                         ids=["shared-slices", "distinct-slices"])
@pytest.mark.parametrize("mu,wd", [(0.9, 5e-4), (0.0, 0.0), (0.5, 0.1)])
def test_implicit_linear_weight_follows_explicit_sgd(mu, wd, of_client):
    from fedbrb_fast.training.implicit_linear import ImplicitLinearWeight

    g = torch.Generator().manual_seed(0)
    out_f, in_f, b = 6, 5, 4
    owner = torch.tensor(of_client)
    slices = SliceSet(torch.randn(int(owner.max()) + 1, out_f, in_f, generator=g, dtype=torch.float64), owner)
    n, start = len(owner), slices.unique.clone()
    hp = LocalTraining(1, b, 0.1, mu, wd)
    w, buf = slices.stacked(), torch.zeros(n, out_f, in_f, dtype=torch.float64)
    imp = ImplicitLinearWeight(slices, steps=4, batch_size=b)
    assert (imp.w0_stacked is None) == (len(set(of_client)) == 2)  # runs of shared slices take tall GEMMs
    bias = torch.randn(n, out_f, generator=g, dtype=torch.float64)
    for k in (8, 7, 5, 3):  # clients drop off the end
        h = torch.randn(k, b, in_f, generator=g, dtype=torch.float64)
        expected = torch.baddbmm(bias[:k].unsqueeze(1), h, w[:k].transpose(1, 2))
        assert torch.allclose(imp.forward(h, bias[:k]), expected, atol=1e-10)
        dy = torch.randn(k, b, out_f, generator=g, dtype=torch.float64)
        grad = torch.bmm(dy.transpose(1, 2), h) + wd * w[:k]
        buf[:k] = mu * buf[:k] + grad
        w[:k] -= 0.1 * buf[:k]
        imp.step(h, dy, hp)
    assert torch.allclose(imp.materialize(), w, atol=1e-10)
    factored = imp.factored()
    assert factored.base is slices.unique and torch.equal(factored.of_client, owner)
    assert all(torch.allclose(factored[i], w[i], atol=1e-10) for i in range(n))
    assert torch.equal(slices.unique, start)  # the shared slices are never written


@pytest.mark.parametrize("method,sizes", [("fedbrb", [8, 5, 8, 3, 7, 2, 6, 8]),
                                          ("fedrolex", [12, 5, 12, 3, 9, 2, 6, 11])])
def test_implicit_path_matches_reference_end_to_end(method, sizes):
    from fedbrb_fast.training.implicit_linear import use_implicit

    model = MLP(48, [32, 32], 5, norm="bn")
    data = make_data((48,), sizes=sizes)
    # Hidden layers of width-1/2 clients: 2 steps of 4 within half of 16; 3 steps only because
    # FedRolex's clients share their slices.
    assert use_implicit(16, 16, 2, 4) if method == "fedbrb" else (
        use_implicit(16, 16, 3, 4, shared=True) and not use_implicit(16, 16, 3, 4))
    params = model.init(torch.Generator().manual_seed(1))
    plans = make_round_plans(method, 0, list(range(8)), [0.5] * 8, group_sizes=model.layout.group_sizes,
                             num_blocks=2, seed=0)
    for clip in (None, 0.05):
        local = LocalTraining(1, 4, 0.05, 0.9, 5e-4, clip)
        ctx = RoundContext(round_idx=0, seed=2, model=model, data=data, local=local,
                           weighting="samples", label_masking=True)
        ref = ReferenceEngine().train_round(ctx, plans, params, PhaseTimer())
        bat = BatchedEngine().train_round(ctx, plans, params, PhaseTimer())
        assert_same_clients(ref, bat)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                    reason="trains on the CPU, where the Triton kernels run only under TRITON_INTERPRET=1 (set by "
                           "conftest where there is no GPU)")
@pytest.mark.slow  # about a second each under the interpreter
@pytest.mark.parametrize("norm", ["none", "bn"])
def test_triton_linear_backend_matches_torch_path(norm):
    """The grouped GEMM kernels (interpreted on CPU) behind the batched engine's linear layers."""
    model = MLP(12, [8, 16], 5, norm=norm)
    data = make_data((12,), sizes=[6, 3, 5, 6])
    params = model.init(torch.Generator().manual_seed(3))
    plans = make_round_plans("fedbrb", 0, [0, 1, 2, 3], [0.5, 0.5, 1.0, 0.5], group_sizes=model.layout.group_sizes,
                             num_blocks=2, seed=0)
    ctx = RoundContext(round_idx=0, seed=1, model=model, data=data, local=LocalTraining(1, 4, 0.05, 0.9, 5e-4, 0.5),
                       weighting="samples", label_masking=False)
    engine = BatchedEngine(linear_backend="triton")
    assert engine.linear_backend == "triton"  # TRITON_INTERPRET=1 in conftest
    tri = engine.train_round(ctx, plans, params, PhaseTimer())
    ref = ReferenceEngine().train_round(ctx, plans, params, PhaseTimer())
    assert_same_clients(ref, tri)


def test_triton_backend_and_cuda_fall_back_with_a_message(monkeypatch):
    import fedbrb_fast.kernels.grouped_gemm_kernels as kernels
    from fedbrb_fast.engines.batched import resolve_device, resolve_linear_backend

    monkeypatch.setattr(kernels, "INTERPRETED", False)
    with pytest.warns(RuntimeWarning, match="needs a CUDA device"):
        assert resolve_linear_backend("triton", torch.device("cpu")) == "torch"
    assert resolve_linear_backend("triton", torch.device("cuda")) == "triton"
    assert resolve_linear_backend("torch", torch.device("cpu")) == "torch"
    if not torch.cuda.is_available():
        with pytest.warns(RuntimeWarning, match="no CUDA device"):
            assert resolve_device("cuda") == torch.device("cpu")


@pytest.mark.slow  # about 1.3 s
def test_a_streamed_round_holds_one_chunk_and_equals_the_whole_round(tiny_cfg_dict, monkeypatch):
    """Simulation pulls the batched engine's chunks as aggregation asks for them: when a chunk is
    trained, every earlier chunk's updates are already gone (memory bounded by the chunk size)."""
    import gc
    import weakref

    raw = {**tiny_cfg_dict, "train": {**tiny_cfg_dict["train"], "max_clients_per_step": 2},
           "clients": {**tiny_cfg_dict["clients"], "per_round": 7}}
    original = BatchedEngine.train_pieces
    alive_at_each_chunk: list[int] = []

    def watched(self, *args, **kwargs):
        earlier: list[weakref.ref] = []
        for piece in original(self, *args, **kwargs):
            gc.collect()
            alive_at_each_chunk.append(sum(ref() is not None for ref in earlier))
            earlier += [weakref.ref(t) for item in piece.updates for t in item.params.values()]
            yield piece
            del piece

    monkeypatch.setattr(BatchedEngine, "train_pieces", watched)
    streamed = Simulation(config_from_dict(raw))
    record = streamed.run_round()
    assert len(alive_at_each_chunk) >= 4 and max(alive_at_each_chunk) == 0
    monkeypatch.undo()
    whole = Simulation(config_from_dict({**raw, "train": {**raw["train"], "max_clients_per_step": 256}}))
    whole.run_round()
    assert record.clients == 7 and record.seconds["train"] > 0 and record.seconds["aggregate"] > 0
    for name, p in whole.params.items():
        assert torch.allclose(streamed.params[name], p, atol=1e-6), name


def test_nested_phases_are_timed_exclusively():
    import time

    timer = PhaseTimer()
    with timer.phase("aggregate"):
        time.sleep(0.02)
        with timer.phase("train"):
            time.sleep(0.05)
    seconds = timer.reset()
    assert seconds["train"] >= 0.05 and 0.02 <= seconds["aggregate"] < 0.05


@pytest.mark.parametrize("backend", ["torch", "numba"])
@pytest.mark.parametrize("method", ["fedbrb", "fedrolex", "heterofl", "fd"])
def test_factored_input_layer_aggregates_like_the_reference(method, backend):
    """The batched engine hands the data-span input layer over as factors; the fused backends
    sum them by GEMMs and match the reference aggregate of the reference engine's updates."""
    from fedbrb_fast.aggregation import FactoredStack

    model, data = model_and_data("mlp_wide", "bn")
    params, ref, bat = run_both(model, data, method, label_mask=True)
    assert any(isinstance(item.params["hidden0.weight"], FactoredStack) for item in bat.updates)
    for rule in (rule_for_method(method, 0.3, 4), rule_for_method("heterofl", 0.0, 4)):
        expected = aggregate(params, model.layout, ref.updates, rule).params
        got = aggregate(params, model.layout, bat.updates, rule, backend=backend).params
        for name in expected:
            assert torch.allclose(got[name], expected[name], atol=5e-5, rtol=1e-4), name


def test_factored_updates_are_screened_corrupted_and_excluded_per_client():
    from fedbrb_fast.aggregation import FactoredStack
    from fedbrb_fast.faults import corrupt, update_norms, without_clients

    model, data = model_and_data("mlp_wide", "none")
    params, ref, bat = run_both(model, data, "fedrolex")
    dense = {c: u for c, u in per_client(bat).items()}
    norms = update_norms(params, model.layout, bat.updates)
    assert norms == pytest.approx(update_norms(params, model.layout, list(dense.values())), rel=1e-5)
    batch = bat.updates[0]
    assert isinstance(batch.params["hidden0.weight"], FactoredStack)
    first, second = batch.clients[0], batch.clients[1]
    corrupt(bat.updates, {first}, "nan")
    corrupt(bat.updates, {second}, "huge")
    factored = batch.params["hidden0.weight"]
    assert isinstance(factored, FactoredStack)
    assert not torch.isfinite(factored[0]).all()
    assert torch.allclose(factored[1], dense[second].params["hidden0.weight"] * 1e8, rtol=1e-4)
    result = aggregate(params, model.layout, without_clients(bat.updates, {second}), rule_for_method("fedrolex", 0, 4),
                       backend="numba")
    assert first in result.excluded and second not in result.included
    kept = [u for c, u in per_client(ref).items() if c not in (first, second)]
    expected = aggregate(params, model.layout, kept, rule_for_method("fedrolex", 0, 4)).params
    for name in expected:
        assert torch.allclose(result.params[name], expected[name], atol=5e-5, rtol=1e-4), name


@pytest.mark.parametrize("kind", ["bn", "gn"])
def test_grouped_normalize_native_kernels_equal_the_masked_statistics(kind):
    """Clients side by side in the channels (channels-last): the native BatchNorm of full batches
    and GroupNorm give every client its own statistics, as the written-out masked form does."""
    from fedbrb_fast.models.stacked import grouped_normalize, stacked_normalize

    g = torch.Generator().manual_seed(0)
    n, b, c = 3, 4, 6
    h = torch.randn(b, n * c, 5, 5, generator=g, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(n, c, generator=g, dtype=torch.float64)
    bias = torch.randn(n, c, generator=g, dtype=torch.float64)
    mask = torch.ones(n, b, dtype=torch.bool)
    expected = stacked_normalize(h.reshape(b, n, c, 5, 5).transpose(0, 1), kind, weight, bias, 2, mask)
    native = grouped_normalize(h, n, kind, weight, bias, 2, mask, full_batches=True)
    assert torch.allclose(native.reshape(b, n, c, 5, 5).transpose(0, 1), expected, atol=1e-12)
    mask[1, 3] = False  # a padded sample: BatchNorm takes the masked statistics
    masked = grouped_normalize(h, n, "bn", weight, bias, 2, mask, full_batches=False)
    assert masked.is_contiguous(memory_format=torch.channels_last)
    expected = stacked_normalize(h.reshape(b, n, c, 5, 5).transpose(0, 1), "bn", weight, bias, 2, mask)
    assert torch.allclose(masked.reshape(b, n, c, 5, 5).transpose(0, 1), expected, atol=1e-12)
