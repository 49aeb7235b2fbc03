import math

import pytest
import torch

from fedbrb_fast.models import MLP
from fedbrb_fast.training import LocalTraining, evaluate, masked_logits, minibatches, train_client
from fedbrb_fast.training.evaluate import evaluation_sums


def toy_problem(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=g)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    return x, y


def test_minibatches_cover_each_epoch_once_with_short_last_batch():
    batches = minibatches(23, 5, 2, torch.Generator().manual_seed(0))
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3] * 2
    for e in range(2):
        assert sorted(torch.cat(batches[5 * e:5 * e + 5]).tolist()) == list(range(23))
    again = minibatches(23, 5, 2, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))


def test_local_training_learns_and_is_deterministic():
    x, y = toy_problem()
    model = MLP(10, [32], 4)
    params = model.init(torch.Generator().manual_seed(0))
    hp = LocalTraining(epochs=20, batch_size=8, lr=0.05, momentum=0.9, weight_decay=0.0)
    acc0, loss0 = evaluate(model, params, x, y, 64)
    r1 = train_client(model, params, x, y, beta=1.0, hp=hp, generator=torch.Generator().manual_seed(1))
    r2 = train_client(model, params, x, y, beta=1.0, hp=hp, generator=torch.Generator().manual_seed(1))
    acc1, loss1 = evaluate(model, r1.params, x, y, 64)
    assert loss1 < 0.5 * loss0 and acc1 > acc0 and acc1 > 0.9
    assert r1.steps == 20 * 8
    assert all(torch.equal(r1.params[k], r2.params[k]) for k in params)
    assert not any(t.requires_grad for t in r1.params.values())


def test_sgd_step_matches_hand_computation():
    """One step of torch SGD semantics: p -= lr * (grad + wd * p) (first momentum buffer = d_p)."""
    x, y = toy_problem(4)
    model = MLP(10, [3], 4)
    params = model.init(torch.Generator().manual_seed(0))
    hp = LocalTraining(epochs=1, batch_size=4, lr=0.1, momentum=0.9, weight_decay=0.01)
    res = train_client(model, params, x, y, beta=1.0, hp=hp, generator=torch.Generator().manual_seed(0))
    leaf = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    torch.nn.functional.cross_entropy(model.forward(leaf, x, train=True), y).backward()
    for k in params:
        grad = leaf[k].grad
        assert grad is not None
        assert torch.allclose(res.params[k], params[k] - 0.1 * (grad + 0.01 * params[k]), atol=1e-6)


def test_clipping_bounds_the_step():
    x, y = toy_problem(16)
    model = MLP(10, [16], 4)
    params = model.init(torch.Generator().manual_seed(0))
    hp = LocalTraining(epochs=1, batch_size=16, lr=1.0, momentum=0.0, weight_decay=0.0, clip_norm=1e-3)
    res = train_client(model, params, x, y, beta=1.0, hp=hp, generator=torch.Generator().manual_seed(0))
    step = torch.sqrt(torch.stack([((res.params[k] - params[k]) ** 2).sum() for k in params]).sum())
    assert step == pytest.approx(1e-3, rel=1e-3)


def test_label_mask_removes_absent_classes_from_softmax():
    logits = torch.zeros(2, 4)
    mask = torch.tensor([True, False, True, False])
    out = masked_logits(logits, mask)
    assert torch.allclose(out.softmax(1), torch.tensor([[0.5, 0, 0.5, 0]] * 2))
    x, y = toy_problem(32)
    keep = (y == 0) | (y == 2)
    model = MLP(10, [8], 4)
    params = model.init(torch.Generator().manual_seed(0))
    hp = LocalTraining(epochs=1, batch_size=8, lr=0.1, momentum=0.0, weight_decay=0.0)
    res = train_client(model, params, x[keep], y[keep], beta=1.0, hp=hp, generator=torch.Generator().manual_seed(0),
                       label_mask=mask)
    # absent classes get no gradient through the masked logits
    assert torch.equal(res.params["out.bias"][[1, 3]], params["out.bias"][[1, 3]])
    assert not torch.equal(res.params["out.bias"][[0, 2]], params["out.bias"][[0, 2]])


def test_evaluate_counts_correct_predictions():
    """Identity layers: the logits are the inputs. Three batches of 2, 2, 1 samples."""
    model = MLP(2, [2], 2, norm="none")
    p = {"hidden0.weight": torch.eye(2), "hidden0.bias": torch.zeros(2),
         "out.weight": torch.eye(2), "out.bias": torch.zeros(2)}
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 3.0], [0.5, 0.0]])
    y = torch.tensor([0, 1, 1, 1, 1])  # predictions 0, 1, 0, 1, 0: samples 0, 1 and 3 are right
    # cross-entropy of logits (a, b): log(e^a + e^b) minus the target's logit
    losses = [math.log(1 + math.exp(-1)), math.log(1 + math.exp(-1)), math.log(1 + math.exp(2)),
              math.log(1 + math.exp(-3)), math.log(1 + math.exp(0.5))]
    correct, loss_sum = evaluation_sums(model, p, x, y, 2, range(5))
    assert correct == 3 and loss_sum == pytest.approx(sum(losses), rel=1e-6)
    acc, loss = evaluate(model, p, x, y, batch_size=2)
    assert acc == 3 / 5 and loss == pytest.approx(sum(losses) / 5, rel=1e-6)
    assert evaluation_sums(model, p, x, y, 2, range(2, 5)) == (1, pytest.approx(sum(losses[2:]), rel=1e-6))
