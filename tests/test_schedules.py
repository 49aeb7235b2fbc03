import pytest

from fedbrb_fast.schedules import lam_at, lr_at


def test_lr_schedules():
    assert lr_at(5, lr=0.1, schedule="constant") == 0.1
    assert [lr_at(t, lr=1.0, schedule="multistep", milestones=[2, 4], gamma=0.1) for t in range(6)] == \
        pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    with pytest.raises(ValueError):
        lr_at(0, lr=1.0, schedule="cyclic")


def test_lam_schedules():
    assert lam_at(3, 10, lam=0.4, schedule="constant") == 0.4
    assert [lam_at(t, 5, lam=1.0, schedule="linear", lam_end=0.0) for t in range(5)] == pytest.approx(
        [1, 0.75, 0.5, 0.25, 0]
    )
    cos = [lam_at(t, 3, lam=1.0, schedule="cosine", lam_end=0.0) for t in range(3)]
    assert cos == pytest.approx([1.0, 0.5, 0.0])
    assert lam_at(0, 1, lam=0.7, schedule="linear", lam_end=0.1) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        lam_at(0, 3, lam=1.0, schedule="step")
