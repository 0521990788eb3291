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


# --- the same map in its other forms: each against lora.forward or plain numpy ----------------------------

def reference_blocks(layout, p):
    """(A_k, B_k) per tap, sliced by hand from the flat layout: the reference for tap_A / tap_B users."""
    r = layout.r
    return [(p[f"A.{name}"], p["B"][k * r:(k + 1) * r]) for k, name in enumerate(layout.taps)]


@pytest.mark.parametrize("bias", [True, False])
def test_dense_and_folded_weights_are_the_forward_map(bias):
    layout, flat, y0, t, _ = setup(bias)
    p, scale = lora.views(flat, layout), 1.5
    y = lora.forward(p, y0, t, layout, scale)[0]
    b = p["bias"] if bias else 0.0
    parts = [t[:, a:e] @ lora.tap_weight(p, layout, scale, k) for k, (a, e) in enumerate(layout.bounds)]
    np.testing.assert_allclose(y0 + sum(parts) + b, y, rtol=1e-12)
    for k, (A, B) in enumerate(reference_blocks(layout, p)):
        np.testing.assert_allclose(lora.tap_weight(p, layout, scale, k), scale * A @ B, rtol=1e-12)
    W = lora.dense_weight(p, layout, scale)
    assert W.shape == (sum(layout.widths), layout.num_outputs)
    np.testing.assert_allclose(y0 + t @ W + lora.output_bias(p, layout), y, rtol=1e-12)
    M = lora.folded(p, layout, scale)
    row = np.hstack([y0, t, np.ones((len(t), 1))])            # [y0 | t | 1]
    np.testing.assert_allclose(row @ M, y, rtol=1e-12)
    np.testing.assert_array_equal(lora.output_bias(p, layout), p["bias"] if bias else np.zeros(layout.num_outputs))


def test_dense_weight_keeps_float32():
    layout = lora.Layout(("a", "b"), (6, 4), 3, 2, True)
    p = lora.views(np.random.default_rng(0).standard_normal(layout.size).astype(np.float32), layout)
    assert lora.dense_weight(p, layout, 2.0).dtype == np.float32 and lora.folded(p, layout, 2.0).dtype == np.float32


@pytest.mark.parametrize("bias", [True, False])
def test_peft_views_are_peft_orientation_and_round_trip(bias):
    layout, flat, _, _, _ = setup(bias)
    p, scale = lora.views(flat, layout), 1.5
    v = lora.peft_views(p, layout)
    assert list(v) == [f"t{k}.lora_{m}.weight" for k in range(3) for m in "AB"] + (["bias"] if bias else [])
    for k, (A, B) in enumerate(reference_blocks(layout, p)):
        lora_A, lora_B = v[f"t{k}.lora_A.weight"], v[f"t{k}.lora_B.weight"]
        assert lora_A.shape == (layout.r, layout.widths[k]) and lora_B.shape == (layout.num_outputs, layout.r)
        np.testing.assert_array_equal(lora_A, A.T)
        # PEFT's get_delta_weight: scaling * lora_B @ lora_A, an (out, in) weight
        np.testing.assert_allclose(scale * lora_B @ lora_A, lora.tap_weight(p, layout, scale, k).T, rtol=1e-12)
    back = np.zeros_like(flat)                                 # loading assigns into the views of a new buffer
    for key, dst in lora.peft_views(lora.views(back, layout), layout).items():
        dst[...] = np.ascontiguousarray(v[key])
    np.testing.assert_array_equal(back, flat)


def test_tap_dropout_zeroes_and_rescales_with_the_same_draws():
    t = np.random.default_rng(0).standard_normal((200, 50)).astype(np.float32)
    out = lora.tap_dropout(t, 0.25, np.random.default_rng(7))
    kept = out != 0
    np.testing.assert_allclose(out[kept], t[kept] / 0.75, rtol=1e-6)
    assert abs(kept.mean() - 0.75) < 0.02 and out.dtype == np.float32
    mask = np.random.default_rng(7).random(t.shape, np.float32) < 0.75   # one float32 draw per value, in order
    np.testing.assert_array_equal(out, t * mask / 0.75)


@pytest.mark.parametrize("bias", [True, False])
def test_mask_classes_leaves_those_outputs_at_y0(bias):
    layout, flat, y0, t, _ = setup(bias)
    p = lora.views(flat, layout)
    before = lora.forward(p, y0, t, layout, 1.5)[0]
    lora.mask_classes(p, layout, np.array([0, 2]))
    after = lora.forward(p, y0, t, layout, 1.5)[0]
    np.testing.assert_array_equal(after[:, [0, 2]], y0[:, [0, 2]])
    np.testing.assert_array_equal(after[:, 1], before[:, 1])
    assert not np.allclose(before[:, [0, 2]], y0[:, [0, 2]])
