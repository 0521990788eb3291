"""Losses and optimisers against torch; schedules and clipping."""
import numpy as np
import pytest

from edgelora.core.losses import (balanced_weights, class_groups, class_weights, classes_present, cross_entropy,
                                  cross_entropy_grad, loss_grad)
from edgelora.core.optim import SGD, Adam, AdamW, clip_grad_norm, learning_rate


@pytest.mark.torch
def test_weighted_cross_entropy_matches_torch():
    import torch
    rng = np.random.default_rng(0)
    y, labels = rng.standard_normal((9, 4)), rng.integers(0, 4, 9)
    w = np.array([0.5, 2.0, 1.0, 3.0])
    loss, g = cross_entropy(y, labels, w)
    ty = torch.tensor(y, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(ty, torch.tensor(labels), weight=torch.tensor(w))
    ref.backward()
    assert abs(loss - ref.item()) < 1e-12
    np.testing.assert_allclose(g, ty.grad.numpy(), rtol=1e-10)


def test_cross_entropy_grad_of_one_hot_targets_is_the_gradient_of_cross_entropy():
    rng = np.random.default_rng(0)
    y, labels = rng.standard_normal((9, 4)), rng.integers(0, 4, 9)
    w = np.array([0.5, 2.0, 1.0, 3.0])
    onehot = np.eye(4)[labels]
    np.testing.assert_allclose(cross_entropy_grad(y.copy(), onehot, w[labels]), cross_entropy(y, labels, w)[1],
                               rtol=1e-10)
    np.testing.assert_allclose(cross_entropy_grad(y.copy(), onehot), cross_entropy(y, labels)[1], rtol=1e-10)


def test_cross_entropy_is_stable_for_huge_logits():
    y = np.array([[1000.0, -1000.0, 0.0]])
    loss, g = cross_entropy(y, np.array([0]))
    assert np.isfinite(loss) and np.isfinite(g).all()


def test_balanced_weights():
    w = balanced_weights(np.array([0, 0, 0, 1]), 3)
    np.testing.assert_allclose(w, [4 / 9, 4 / 3, 0.0], rtol=1e-6)


@pytest.mark.torch
@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_optimisers_match_torch(name):
    import torch
    rng = np.random.default_rng(0)
    theta0 = rng.standard_normal(10)
    grads = rng.standard_normal((6, 10))
    wd = 0.1
    ours = {"sgd": SGD(10, momentum=0.9, weight_decay=wd, dtype=np.float64),
            "adam": Adam(10, weight_decay=wd, dtype=np.float64),
            "adamw": AdamW(10, weight_decay=wd, dtype=np.float64)}[name]
    param = torch.tensor(theta0.copy(), requires_grad=True)
    ref = {"sgd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=wd),
           "adam": lambda p: torch.optim.Adam(p, lr=0.05, weight_decay=wd),
           "adamw": lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=wd)}[name]([param])
    theta = theta0.copy()
    for g in grads:
        ours.step(theta, g.copy(), 0.05)
        param.grad = torch.tensor(g.copy())
        ref.step()
    np.testing.assert_allclose(theta, param.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_cosine_schedule_with_warmup():
    lrs = [learning_rate(i, 100, 1.0, "cosine", warmup=10) for i in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[55] == pytest.approx(0.5, abs=0.02) and lrs[-1] < 0.01
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert learning_rate(50, 100, 0.3) == 0.3


def test_clip_grad_norm():
    g = np.array([3.0, 4.0])
    assert clip_grad_norm(g, 1.0) == pytest.approx(5.0)
    np.testing.assert_allclose(g, [0.6, 0.8])
    g = np.array([0.3, 0.4])
    clip_grad_norm(g, 1.0)
    np.testing.assert_allclose(g, [0.3, 0.4])


def test_loss_grad_of_many_models_is_each_models_gradient_bit_for_bit():
    """The engine's one loss gradient for stacks of models (S, M, b, C) is, per model, the single-model gradient,
    float64 softmax included, and finite for large logits (~1000, where an unshifted exp overflows)."""
    rng = np.random.default_rng(2)
    y = (1000.0 + 5.0 * rng.standard_normal((2, 3, 6, 4))).astype(np.float32)     # (stacks, models, b, C)
    onehot = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 6)]
    want = np.stack([[cross_entropy_grad(m.copy(), onehot) for m in s] for s in y])
    got = loss_grad(y.copy(), onehot, np.full((3, 6, 1), 1 / 6, np.float32))
    assert np.isfinite(got).all() and np.array_equal(got, want)
    shifted = loss_grad(y.copy(), onehot, np.full((3, 6, 1), 1 / 6, np.float32), shift=y[0, 0].max(axis=1)[:, None])
    assert np.isfinite(shifted).all() and np.abs(shifted - want).max() <= 1e-7   # all in float64: rounded once
    target = rng.standard_normal((6, 4)).astype(np.float32)
    assert np.allclose(loss_grad(y.copy(), target, 1 / 6, "regression"), (y - target) * 2 / 4 / 6)


def test_error_class_weights_of_the_wrong_length():
    assert class_weights("none", np.array([0, 1]), 2) is None
    assert np.allclose(class_weights("balanced", np.array([0, 0, 0, 1]), 2), [2 / 3, 2.0])
    with pytest.raises(ValueError, match="should have 3 entries .* found 2"):
        class_weights([1.0, 2.0], np.array([0, 1]), 3)


def test_classes_present_and_groups_are_np_unique_s():
    y = np.random.default_rng(0).choice([0, 2, 3, 7], 200)              # classes 1, 4-6 absent
    assert classes_present(y).tolist() == np.unique(y).tolist() == [0, 2, 3, 7]
    groups = class_groups(y, "classification")
    assert [g.tolist() for g in groups] == [np.flatnonzero(y == c).tolist() for c in np.unique(y)]
    assert classes_present(np.zeros(0, np.int64)).tolist() == []
