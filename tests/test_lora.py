"""Skip adapter math: gradients against finite differences (float64) and torch autograd."""
import numpy as np
import pytest

from edgelora.core import lora
from edgelora.core.losses import cross_entropy, mse


def setup(bias=True, seed=0, n=7, widths=(5, 3, 4), c=3, r=2):
    layout = lora.Layout(tuple(f"t{i}" for i in range(len(widths))), widths, c, r, bias)
    rng = np.random.default_rng(seed)
    flat = rng.standard_normal(layout.size)  # float64, B != 0 so every gradient is non-trivial
    y0 = rng.standard_normal((n, c))
    t = rng.standard_normal((n, sum(widths)))
    labels = rng.integers(0, c, n)
    return layout, flat, y0, t, labels


def loss_and_grad(layout, flat, y0, t, labels, scale=1.5):
    p = lora.views(flat, layout)
    y, saved = lora.forward(p, y0, t, layout, scale)
    loss, g = cross_entropy(y, labels)
    grad = np.zeros_like(flat)
    lora.backward(g, saved, p, lora.views(grad, layout), layout, scale)
    return loss, grad


@pytest.mark.parametrize("bias", [True, False])
def test_gradients_match_finite_differences(bias):
    layout, flat, y0, t, labels = setup(bias)
    _, grad = loss_and_grad(layout, flat, y0, t, labels)
    eps = 1e-6
    num = np.zeros_like(flat)
    for i in range(flat.size):
        d = np.zeros_like(flat)
        d[i] = eps
        num[i] = (loss_and_grad(layout, flat + d, y0, t, labels)[0] -
                  loss_and_grad(layout, flat - d, y0, t, labels)[0]) / (2 * eps)
    rel = np.abs(grad - num).max() / np.abs(num).max()
    assert rel < 1e-4, rel
    names = list(layout.shapes)
    assert set(names) == {"A.t0", "A.t1", "A.t2", "B"} | ({"bias"} if bias else set())


@pytest.mark.torch
def test_gradients_match_torch_autograd():
    torch = pytest.importorskip("torch")
    layout, flat, y0, t, labels = setup(n=11)
    scale = 0.75
    loss, grad = loss_and_grad(layout, flat, y0, t, labels, scale)
    p = {k: torch.tensor(v, requires_grad=True) for k, v in lora.views(flat.copy(), layout).items()}
    tt = torch.tensor(t)
    h = torch.cat([tt[:, a:b] @ p[f"A.{name}"] for name, (a, b) in zip(layout.taps, layout.bounds)], dim=1)
    y = torch.tensor(y0) + scale * h @ p["B"] + p["bias"]
    ref = torch.nn.functional.cross_entropy(y, torch.tensor(labels))
    ref.backward()
    assert abs(loss - ref.item()) < 1e-10
    g = lora.views(grad, layout)
    for k, v in p.items():
        np.testing.assert_allclose(g[k], v.grad.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.torch
def test_mse_gradient_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    y, target = rng.standard_normal((6, 2)), rng.standard_normal((6, 2))
    loss, g = mse(y, target)
    ty = torch.tensor(y, requires_grad=True)
    ref = torch.nn.functional.mse_loss(ty, torch.tensor(target))
    ref.backward()
    assert abs(loss - ref.item()) < 1e-12
    np.testing.assert_allclose(g, ty.grad.numpy(), rtol=1e-12)


def test_new_adapter_changes_nothing():
    layout = lora.Layout(("a", "b"), (6, 4), 3, 4, True)
    flat = lora.init(layout, seed=3)
    rng = np.random.default_rng(0)
    y0, t = rng.standard_normal((5, 3)).astype(np.float32), rng.standard_normal((5, 10)).astype(np.float32)
    y, _ = lora.forward(lora.views(flat, layout), y0, t, layout, 2.0)
    np.testing.assert_array_equal(y, y0)
    assert np.abs(lora.views(flat, layout)["A.a"]).max() > 0  # A random, B zero (PEFT's convention)
    np.testing.assert_array_equal(lora.init(layout, seed=3), flat)


def test_views_share_the_flat_buffer():
    layout = lora.Layout(("a",), (3,), 2, 1, True)
    flat = np.zeros(layout.size, np.float32)
    lora.views(flat, layout)["B"][:] = 7
    assert flat.sum() == 14 and layout.size == 3 + 2 + 2
