"""The framework-agnostic API: numpy or torch tensors by name, windows or index sets per sliced axis."""

import numpy as np
import pytest
import torch
from aggregation_rounds import NUM_BLOCKS, make_round

from fedbrb_fast.aggregation import Accumulator, AggregationError, AggregationRule, Update, aggregate, aggregate_arrays

RULE = AggregationRule("broadcast", lam=0.3, num_blocks=NUM_BLOCKS)


def sliced_axes(layout):
    return {s.name: [a for a, g in enumerate(s.axis_groups) if g is not None] for s in layout.params}


def segmented_axes(layout):
    """Every sliced axis as {axis: R}, R its group's segments."""
    return {s.name: {a: layout.segments(g) for a, g in s.sliced_axes} for s in layout.params}


def portable(u, layout, as_window: bool):
    """A ClientUpdate in the agnostic form: numpy arrays, (start, size) windows (inside each segment
    of a segmented axis) or index arrays."""
    slices = {}
    for spec in layout.params:
        axes = {}
        for axis, g in enumerate(spec.axis_groups):
            if g is not None:
                ix = u.indices[g]
                axes[axis] = (int(ix[0]), len(ix) // layout.segments(g)) if as_window else ix.numpy()
        slices[spec.name] = axes
    return Update(weight=u.weight, tensors={k: v.numpy() for k, v in u.params.items()}, slices=slices,
                  masks={k: v.numpy() for k, v in u.masks.items()}, client=u.client)


# "segmented": axes of R equal segments (attention heads, docs/algorithm.md#segments) declared as
# {axis: R}: a window is taken inside each segment, and the broadcast rule tiles the axis into R * K
# positions, as the layout's group_segments make the reference do.
@pytest.mark.parametrize("arch,axes_of", [("cnn", sliced_axes), ("segmented", segmented_axes)],
                         ids=["axis-lists", "segmented"])
@pytest.mark.parametrize("method,as_window", [("fedrolex", True), ("fedbrb", True), ("heterofl", True), ("fd", False)])
@pytest.mark.parametrize("rule", [RULE, AggregationRule("overlap")])
def test_numpy_updates_match_the_reference(arch, axes_of, method, as_window, rule):
    layout, params, updates = make_round(arch, method, label_mask=True)
    expected = aggregate(params, layout, updates, rule)
    got = aggregate_arrays({k: v.numpy() for k, v in params.items()}, [portable(u, layout, as_window) for u in updates],
                           rule, sliced=axes_of(layout), backend="numba")
    assert got.included == expected.included
    for name, value in expected.params.items():
        assert isinstance(got.params[name], np.ndarray) and got.params[name].dtype == np.float32
        np.testing.assert_allclose(got.params[name], value.numpy(), atol=1e-5)


def test_sliced_axes_default_to_those_the_updates_slice():
    params = {"w": torch.zeros(4, 3), "b": torch.zeros(4)}
    updates = [Update(1.0, {"w": torch.ones(2, 3), "b": torch.ones(2)}, {"w": {0: (3, 2)}, "b": {0: [3, 0]}}),
               Update(3.0, {"w": torch.full((4, 3), 5.0), "b": torch.full((4,), 5.0)})]
    res = aggregate_arrays(params, updates, AggregationRule("overlap"), backend="torch")
    assert res.params["b"].tolist() == [4.0, 5.0, 5.0, 4.0] and res.params["w"][:, 0].tolist() == [4.0, 5.0, 5.0, 4.0]
    assert res.included == [0, 1] and res.backend == "torch"


def test_streaming_agnostic_updates_with_numpy():
    layout, params, updates = make_round("mlp", "fedrolex")
    acc = Accumulator({k: v.numpy() for k, v in params.items()}, sliced_axes(layout), RULE, backend="numba")
    for u in updates:
        acc.add(portable(u, layout, as_window=True))
    got, expected = acc.finalize(), aggregate(params, layout, updates, RULE)
    for name, value in expected.params.items():
        np.testing.assert_allclose(got.params[name], value.numpy(), atol=1e-5)
    assert set(acc.partial_sums()) == set(layout.names)


def test_updates_map_onto_a_model_layout_when_their_groups_agree():
    layout, params, updates = make_round("mlp", "fedbrb")
    agnostic = [portable(u, layout, as_window=True) for u in updates]
    acc = Accumulator(params, layout, RULE, backend="torch")
    acc.add(agnostic)
    expected = aggregate(params, layout, updates, RULE)
    for name in layout.names:
        assert torch.allclose(acc.finalize().params[name], expected.params[name], atol=1e-5)
    clash = Update(1.0, agnostic[0].tensors, {**agnostic[0].slices, "hidden0.bias": {0: (1, 3)}}, client=99)
    with pytest.raises(AggregationError, match="client 99: hidden0.bias axis 0 disagrees"):
        Accumulator(params, layout, RULE, backend="torch").add(clash)


BAD_UPDATES = {
    "window too long": (Update(1.0, {"w": np.ones((5, 3))}, {"w": {0: (0, 5)}}), "does not fit"),
    "window start outside": (Update(1.0, {"w": np.ones((2, 3))}, {"w": {0: (4, 2)}}), "does not fit"),
    "axis not sliced": (Update(1.0, {"w": np.ones((4, 2))}, {"w": {1: (0, 2)}}), "not sliced along axis 1"),
    "unknown tensor": (Update(1.0, {"w": np.ones((4, 3))}, {"v": {0: (0, 2)}}), "unknown tensor 'v'"),
    "weight not a number": (Update("heavy", {"w": np.ones((4, 3))}),  # type: ignore[arg-type]  # the bad input tested
                            "weight must be a number"),
    "repeated channel": (Update(1.0, {"w": np.ones((2, 3))}, {"w": {0: np.array([1, 1])}}), "repeats channels"),
}


@pytest.mark.parametrize("case", sorted(BAD_UPDATES))
def test_bad_agnostic_updates_raise_clearly(case):
    update, match = BAD_UPDATES[case]
    params = {"w": np.zeros((4, 3), dtype=np.float32)}
    acc = Accumulator(params, {"w": [0]}, AggregationRule("overlap"), backend="numba")
    with pytest.raises(AggregationError, match=match):
        acc.add(update)
    assert acc.included == [] and (params["w"] == 0).all()


def test_only_axes_0_and_1_may_be_sliced():
    with pytest.raises(AggregationError, match="only axes 0 and 1"):
        Accumulator({"k": torch.zeros(2, 2, 4)}, {"k": [2]}, AggregationRule("overlap"), backend="torch")


# -- axes of R equal segments (attention heads, docs/algorithm.md#segments) -------------------------
def test_streaming_segmented_updates_with_torch_tensors():
    layout, params, updates = make_round("segmented", "fedbrb")
    acc = Accumulator(params, segmented_axes(layout), RULE, backend="torch")
    assert acc.layout.group_segments.count(4) == 3  # q.weight axis 0, q.bias axis 0, o.weight axis 1
    for u in updates:
        acc.add(portable(u, layout, as_window=True))
    expected = aggregate(params, layout, updates, RULE)
    for name, value in expected.params.items():
        assert torch.allclose(acc.finalize().params[name], value, atol=1e-5), name


def test_a_window_applies_inside_every_segment():
    params = {"q": np.zeros((8, 2), np.float32)}  # 2 heads of 4 rows
    update = Update(1.0, {"q": np.arange(8, dtype=np.float32).reshape(4, 2)}, {"q": {0: (3, 2)}})
    got = aggregate_arrays(params, [update], AggregationRule("overlap"), sliced={"q": {0: 2}}, backend="torch")
    # rows 3, 0 of head 0 and 7, 4 of head 1 (wrapping inside the head)
    assert got.params["q"][:, 0].tolist() == [2.0, 0.0, 0.0, 0.0, 6.0, 0.0, 0.0, 4.0]


@pytest.mark.parametrize("sliced,update,match", [
    ({"q": {0: 3}}, None, "q: axis 0 of size 8 does not hold 3 equal segments"),
    ({"q": {0: 0}}, None, "q: axis 0 must hold a positive whole number of segments, got 0"),
    ({"q": {0: 1.5}}, None, "got 1.5"),
    ({"q": {2: 2}}, None, "only axes 0 and 1 may be sliced"),
    ({"q": {0: 2}}, Update(1.0, {"q": np.ones((2, 2))}, {"q": {0: (4, 1)}}),
     r"window \(start=4, size=1\) does not fit each of its 2 segments of 4"),
    ({"q": {0: 2}}, Update(1.0, {"q": np.ones((10, 2))}, {"q": {0: (0, 5)}}), "does not fit each of its 2 segments"),
])
def test_bad_segment_declarations_and_windows_raise_clearly(sliced, update, match):
    params = {"q": np.zeros((8, 2), np.float32)}
    with pytest.raises(AggregationError, match=match):
        acc = Accumulator(params, sliced, AggregationRule("overlap"), backend="torch")
        acc.add(update)
    assert (params["q"] == 0).all()


def test_the_broadcast_rule_needs_segments_that_split_into_k_blocks():
    params = {"q": np.zeros((24, 2), np.float32)}  # 4 heads of 6: no K = 4 blocks per head
    with pytest.raises(AggregationError, match=r"channel group 0 of size 24 \(4 segments of 6\) does not split into 4 "
                                               r"blocks per segment"):
        Accumulator(params, {"q": {0: 4}}, AggregationRule("broadcast", lam=0.5, num_blocks=4), backend="torch")
    Accumulator(params, {"q": {0: 4}}, AggregationRule("broadcast", lam=0.5, num_blocks=3), backend="torch")
