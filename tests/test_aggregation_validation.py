"""The fused backends reject exactly what the reference rejects, with the reference's message, and
check stacked batches without unbinding them."""

from dataclasses import replace

import pytest
import torch
from aggregation_rounds import NUM_BLOCKS, batched, make_round

from fedbrb_fast.aggregation import AggregationError, AggregationRule, ClientBatch, aggregate, validation

RULE = AggregationRule("broadcast", lam=0.5, num_blocks=NUM_BLOCKS)


def first_batch():
    layout, params, updates = make_round("mlp", "fedbrb", label_mask=True, widths=(0.25,) * 5)
    (batch,) = batched(updates)
    return layout, params, batch


def with_index(batch, group, fn):
    indices = list(batch.indices)
    indices[group] = fn(indices[group].clone())
    return replace(batch, indices=tuple(indices))


def with_param(batch, name, value):
    return replace(batch, params={**batch.params, name: value})


def set_item(t, index, value):
    t[index] = value
    return t


CORRUPTIONS = {
    "index out of range": lambda b: with_index(b, 0, lambda ix: set_item(ix, (3, 0), 8)),
    "negative index": lambda b: with_index(b, 1, lambda ix: set_item(ix, (2, 1), -1)),
    "repeated channel": lambda b: with_index(b, 1, lambda ix: set_item(ix, (4, 2), ix[4, 0])),
    "float index": lambda b: with_index(b, 0, lambda ix: ix.float()),
    "negative weight": lambda b: replace(b, weights=set_item(b.weights.clone(), 3, -1.0)),
    "nan weight": lambda b: replace(b, weights=set_item(b.weights.clone(), 1, float("nan"))),
    "wrong shape": lambda b: with_param(b, "hidden1.weight", b.params["hidden1.weight"][:, :, :1]),
    "integer tensor": lambda b: with_param(b, "out.bias", b.params["out.bias"].long()),
    "missing tensor": lambda b: replace(b, params={k: v for k, v in b.params.items() if k != "out.bias"}),
    "unknown tensor": lambda b: with_param(b, "extra", torch.zeros(len(b), 2)),
    "mask shape": lambda b: replace(b, masks={**b.masks, "out.bias": torch.ones(len(b), 3)}),
    "negative mask": lambda b: replace(b, masks={**b.masks, "out.bias": -b.masks["out.bias"] - 1}),
    "mask for unknown tensor": lambda b: replace(b, masks={**b.masks, "nope": torch.ones(len(b), 1)}),
    "duplicate client": lambda b: replace(b, clients=(b.clients[0], b.clients[0], *b.clients[2:])),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_batched_checks_raise_the_reference_error(case):
    layout, params, batch = first_batch()
    bad = CORRUPTIONS[case](batch)
    before = {k: v.clone() for k, v in params.items()}
    with pytest.raises(AggregationError) as reference:
        aggregate(params, layout, [bad], RULE)
    with pytest.raises(AggregationError) as fused:
        aggregate(params, layout, [bad], RULE, backend="numba")
    assert str(fused.value) == str(reference.value)
    assert all(torch.equal(before[k], params[k]) for k in params)


def test_valid_batches_skip_the_per_client_reference(monkeypatch):
    layout, params, batch = first_batch()
    monkeypatch.setattr(validation, "validate_updates", lambda *a: pytest.fail("unbound a valid batch"))
    aggregate(params, layout, [batch], RULE, backend="numba")


def test_batch_structure_errors_are_clear():
    layout, params, batch = first_batch()
    with pytest.raises(AggregationError, match=r"weights must be a tensor of shape \(5,\)"):
        aggregate(params, layout, [replace(batch, weights=torch.ones(4))], RULE, backend="numba")
    short = with_param(batch, "out.weight", batch.params["out.weight"][:3])
    with pytest.raises(AggregationError, match="tensor out.weight must be stacked on a leading axis of 5 clients"):
        aggregate(params, layout, [short], RULE, backend="numba")


def test_global_tensors_and_block_counts_are_checked():
    layout, params, batch = first_batch()
    wrong = {**params, "out.bias": torch.zeros(3)}
    with pytest.raises(AggregationError, match="global tensor out.bias"):
        aggregate(wrong, layout, [batch], RULE, backend="numba")
    with pytest.raises(AggregationError, match="does not split into 3 blocks"):
        aggregate(params, layout, [batch], AggregationRule("broadcast", 0.5, 3), backend="numba")


def test_mixed_batches_and_single_updates_find_cross_duplicates():
    layout, params, updates = make_round("mlp", "fedbrb")
    items = batched(updates) + [updates[0]]
    assert any(isinstance(b, ClientBatch) for b in items)
    with pytest.raises(AggregationError, match=f"client {updates[0].client}: sent more than one update"):
        aggregate(params, layout, items, RULE, backend="torch")


def test_an_empty_batch_adds_nothing():
    layout, params, batch = first_batch()
    empty = ClientBatch((), batch.weights[:0], tuple(ix[:0] for ix in batch.indices),
                        {k: v[:0] for k, v in batch.params.items()}, {k: v[:0] for k, v in batch.masks.items()})
    res = aggregate(params, layout, [empty], RULE, backend="numba")
    assert res.included == [] and all(torch.equal(res.params[k], params[k]) for k in params)
