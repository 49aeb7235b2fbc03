"""The framework-agnostic API: numpy or torch tensors by name, windows or index sets per sliced axis."""

import numpy as np
import pytest
import torch
from aggregation_rounds import NUM_BLOCKS, make_round

from fedbrb_fast.aggregation import Accumulator, AggregationError, AggregationRule, Update, aggregate, aggregate_arrays

RULE = AggregationRule("broadcast", lam=0.3, num_blocks=NUM_BLOCKS)


def sliced_axes(layout):
    return {s.name: [a for a, g in enumerate(s.axis_groups) if g is not None] for s in layout.params}


def portable(u, layout, as_window: bool):
    """A ClientUpdate in the agnostic form: numpy arrays, (start, size) windows or index arrays."""
    slices = {}
    for spec in layout.params:
        axes = {}
        for axis, g in enumerate(spec.axis_groups):
            if g is not None:
                ix = u.indices[g]
                axes[axis] = (int(ix[0]), len(ix)) if as_window else ix.numpy()
        slices[spec.name] = axes
    return Update(weight=u.weight, tensors={k: v.numpy() for k, v in u.params.items()}, slices=slices,
                  masks={k: v.numpy() for k, v in u.masks.items()}, client=u.client)


@pytest.mark.parametrize("method,as_window", [("fedrolex", True), ("fedbrb", True), ("fd", False)])
@pytest.mark.parametrize("rule", [RULE, AggregationRule("overlap")])
def test_numpy_updates_match_the_reference(method, as_window, rule):
    layout, params, updates = make_round("cnn", method, label_mask=True)
    expected = aggregate(params, layout, updates, rule)
    got = aggregate_arrays({k: v.numpy() for k, v in params.items()}, [portable(u, layout, as_window) for u in updates],
                           rule, sliced=sliced_axes(layout), backend="numba")
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
