import itertools

import pytest
import torch

from fedbrb_fast.plans import (
    assign_widths,
    element_coverage,
    fedbrb_indices,
    make_round_plans,
    rolling_block_start,
    sample_clients,
    tile_coverage,
)


def as_lists(plan):
    return [t.tolist() for t in plan.indices]


def test_fedbrb_hand_computed_round():
    # K = 4, two groups of 8 channels (B = 2); round 1 with M = 3 clients -> u = 3, 4, 5 by sorted id.
    plans = make_round_plans("fedbrb", 1, [9, 2, 5], [0.25, 0.25, 0.5], group_sizes=[8, 8], num_blocks=4, seed=0)
    by_client = {p.client: p for p in plans}
    assert [p.client for p in plans] == [9, 2, 5]  # input order kept
    assert by_client[2].roll == 3 and as_lists(by_client[2]) == [[6, 7], [6, 7]]
    # u = 4: q = 1 -> b0 = 0, b1 = 1; width 1/2 takes two blocks each.
    assert by_client[5].roll == 4 and as_lists(by_client[5]) == [[0, 1, 2, 3], [2, 3, 4, 5]]
    assert by_client[9].roll == 5 and as_lists(by_client[9]) == [[2, 3], [4, 5]]


def test_fedbrb_wraps_around():
    idx = fedbrb_indices(3, 0.5, [8], 4, "shear")
    assert idx[0].tolist() == [6, 7, 0, 1]


def test_diagonal_schedule_uses_same_block_everywhere():
    for u in range(20):
        assert {rolling_block_start(u, g, 4, "diagonal") for g in range(3)} == {u % 4}


def test_fedrolex_hand_computed():
    (p,) = make_round_plans("fedrolex", 7, [0], [0.25], group_sizes=[8, 16], num_blocks=4, seed=0)
    assert as_lists(p) == [[7, 0], [7, 8, 9, 10]]


def test_heterofl_takes_leading_channels():
    (p,) = make_round_plans("heterofl", 5, [1], [0.25], group_sizes=[8, 12], num_blocks=4, seed=0)
    assert as_lists(p) == [[0, 1], [0, 1, 2]]


def test_fedavg_takes_everything():
    for method in ("fedavg", "fedavg_small"):
        (p,) = make_round_plans(method, 3, [1], [0.25], group_sizes=[8, 4], num_blocks=4, seed=0)
        assert p.width == 1.0 and as_lists(p) == [list(range(8)), list(range(4))]


def test_fd_is_random_sorted_and_reproducible():
    a = make_round_plans("fd", 2, [1, 4], [0.25, 0.5], group_sizes=[16, 8], num_blocks=4, seed=11)
    b = make_round_plans("fd", 2, [4, 1], [0.5, 0.25], group_sizes=[16, 8], num_blocks=4, seed=11)
    assert as_lists(a[0]) == as_lists(b[1]) and as_lists(a[1]) == as_lists(b[0])  # order-independent
    for p, k in zip(a, (4, 8), strict=True):
        idx = p.indices[0]
        assert len(idx) == k and torch.equal(idx, idx.sort().values) and idx.unique().numel() == k
    c = make_round_plans("fd", 3, [1], [0.25], group_sizes=[16, 8], num_blocks=4, seed=11)
    d = make_round_plans("fd", 2, [1], [0.25], group_sizes=[16, 8], num_blocks=4, seed=12)
    assert as_lists(c[0]) != as_lists(a[0]) and as_lists(d[0]) != as_lists(a[0])


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown method"):
        make_round_plans("nope", 0, [0], [0.5], group_sizes=[4], num_blocks=2, seed=0)


@pytest.mark.parametrize("k", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("start", [0, 1, 7, 123])
def test_fedbrb_covers_every_tile_exactly_once_per_k_squared_counters(k, start):
    sizes = [2 * k, 3 * k, k, 2 * k]
    plans = [make_plan(u, 1 / k, sizes, k) for u in range(start, start + k * k)]
    for g in range(len(sizes) - 1):
        cov = tile_coverage(plans, g + 1, g, sizes[g + 1], sizes[g], k)
        assert torch.equal(cov, torch.ones(k, k, dtype=torch.int64)), (g, cov)


@pytest.mark.parametrize("k,s", [(4, 2), (8, 2), (8, 4), (5, 3)])
def test_uniform_wider_clients_cover_every_tile_s_squared_times(k, s):
    sizes = [k, 2 * k, k]
    plans = [make_plan(u, s / k, sizes, k) for u in range(5, 5 + k * k)]
    for g in range(len(sizes) - 1):
        assert torch.equal(tile_coverage(plans, g + 1, g, sizes[g + 1], sizes[g], k), torch.full((k, k), s * s))


@pytest.mark.parametrize("k", [4, 8])
def test_mixed_widths_cover_every_tile(k):
    sizes = [k, 2 * k, k]
    widths = [1 / k, 2 / k, 4 / k]
    plans = [make_plan(u, widths[u % 3], sizes, k) for u in range(k * k)]
    for g in range(len(sizes) - 1):
        assert tile_coverage(plans, g + 1, g, sizes[g + 1], sizes[g], k).min() >= 1


@pytest.mark.parametrize("k", [2, 4])
def test_round_with_k_squared_clients_trains_every_tile(k):
    sizes = [2 * k, 2 * k, 2 * k]
    for t in (0, 3):
        plans = make_round_plans(
            "fedbrb", t, list(range(k * k)), [1 / k] * (k * k), group_sizes=sizes, num_blocks=k, seed=0
        )
        for g in range(2):
            assert tile_coverage(plans, g + 1, g, sizes[g + 1], sizes[g], k).min() == 1


def test_diagonal_ablation_misses_off_diagonal_tiles():
    k = 4
    plans = [make_plan(u, 1 / k, [8, 8], k, "diagonal") for u in range(k * k)]
    cov = tile_coverage(plans, 1, 0, 8, 8, k)
    assert torch.equal(cov, torch.eye(k, dtype=torch.int64) * k)


def test_measured_coverage_of_baselines_in_small_to_large():
    k, n = 4, 16
    rolex = [
        p
        for t in range(n)
        for p in make_round_plans("fedrolex", t, [0], [1 / k], group_sizes=[n, n], num_blocks=k, seed=0)
    ]
    hetero = [
        p
        for t in range(n)
        for p in make_round_plans("heterofl", t, [0], [1 / k], group_sizes=[n, n], num_blocks=k, seed=0)
    ]
    # HeteroFL trains one tile of K*K, forever.
    h_tiles = tile_coverage(hetero, 1, 0, n, n, k)
    assert (h_tiles > 0).sum() == 1 and h_tiles[0, 0] == n
    assert (element_coverage(hetero, 1, 0, n, n) > 0).float().mean() == pytest.approx(1 / k**2)
    # FedRolex's shared window trains only a diagonal band: |i - j| (cyclic) < w, i.e. (2w - 1) / N.
    w = n // k
    assert (element_coverage(rolex, 1, 0, n, n) > 0).float().mean() == pytest.approx((2 * w - 1) / n)
    full = tile_coverage(rolex, 1, 0, n, n, k)
    assert torch.equal(full > 0, torch.eye(k, dtype=torch.bool))
    brb = [
        p
        for t in range(k)
        for p in make_round_plans("fedbrb", t, list(range(k)), [1 / k] * k, group_sizes=[n, n], num_blocks=k, seed=0)
    ]
    assert (element_coverage(brb, 1, 0, n, n) > 0).all()


def make_plan(u, width, sizes, k, schedule="shear"):
    from fedbrb_fast.plans import ClientPlan

    return ClientPlan(client=u, width=width, indices=fedbrb_indices(u, width, sizes, k, schedule), roll=u)


def test_assign_widths_follows_proportions():
    w = assign_widths(10, [0.25, 0.125], [3, 1], seed=0)
    assert sorted(w).count(0.25) == 8 and w.count(0.125) == 2  # 7.5 / 2.5 -> largest remainder
    assert w == assign_widths(10, [0.25, 0.125], [3, 1], seed=0)
    assert any(
        assign_widths(10, [0.25, 0.125], [1, 1], seed=s) != assign_widths(10, [0.25, 0.125], [1, 1], seed=0)
        for s in range(1, 5)
    )


def test_sample_clients_sorted_distinct_and_seeded():
    a = sample_clients(4, 50, 10, seed=1)
    assert a == sorted(set(a)) and len(a) == 10 and all(0 <= c < 50 for c in a)
    assert a == sample_clients(4, 50, 10, seed=1)
    assert a != sample_clients(5, 50, 10, seed=1)
    assert sample_clients(0, 7, 7, seed=0) == list(range(7))


def test_window_sizes_for_all_methods_match_ceil_beta_n():
    for method, w in itertools.product(("fedbrb", "fedrolex", "heterofl", "fd"), (0.25, 0.5, 0.75)):
        (p,) = make_round_plans(method, 2, [3], [w], group_sizes=[8, 16], num_blocks=4, seed=0)
        assert [len(i) for i in p.indices] == [int(8 * w), int(16 * w)]


@pytest.mark.parametrize("schedule", ["shear", "diagonal"])
def test_layout_coverage_agrees_with_tile_coverage_on_a_chain(schedule):
    from fedbrb_fast.models import MLP
    from fedbrb_fast.plans import layout_coverage

    k, layout = 4, MLP(6, [8, 16, 8], 3, norm="bn").layout
    widths = [1 / k, 2 / k, 3 / k]
    plans = [make_plan(u, widths[u % 3], layout.group_sizes, k, schedule) for u in range(3, 3 + 2 * k * k)]
    cov = layout_coverage(plans, layout, k)
    for g in (1, 2):
        sizes = layout.group_sizes
        assert torch.equal(cov.tiles[f"hidden{g}.weight"], tile_coverage(plans, g, g - 1, sizes[g], sizes[g - 1], k))
    assert torch.equal(cov.tiles["out.weight"], cov.tiles["hidden2.bias"])  # both sliced by group 2 alone
    assert cov.tiles["out.bias"].item() == len(plans)
