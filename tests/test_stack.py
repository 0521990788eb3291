"""The training engine at M = 1 against the readable reference (lora.forward/backward, losses, optim), bit for bit."""
import numpy as np
import pytest

from edgelora import TrainConfig
from edgelora.core import lora
from edgelora.core.loop import Run
from edgelora.core.losses import cross_entropy_grad
from edgelora.core.optim import clip_grad_norm, from_config
from edgelora.core.shuffle import SplitMix64
from edgelora.core.stack import Stack
from tests.helpers import Rows, rows_data as data


@pytest.mark.parametrize("bias", [True, False])
def test_stack_of_one_model_is_lora_forward_and_backward_bit_for_bit(bias):
    layout = lora.Layout(("a", "b"), (6, 4), 3, 2, bias)
    y0, t, _ = data()
    stack = Stack(layout, 1, 1, 2.0, np.zeros(1, np.float32), TrainConfig(batch_size=37))
    stack.p["B"][:] = np.random.default_rng(1).standard_normal(stack.p["B"].shape)
    p = lora.views(stack.flat.copy(), layout)
    y, h = stack.forward(y0, t[None])
    want, saved = lora.forward(p, y0, t, layout, 2.0)
    assert np.array_equal(y[0], want)
    g = np.random.default_rng(2).standard_normal(want.shape).astype(np.float32)
    grads = lora.views(np.zeros(layout.size, np.float32), layout)
    lora.backward(g.copy(), saved, p, grads, layout, 2.0)
    stack.backward(g[None].copy(), h, t[None])
    assert np.array_equal(stack.grad, np.concatenate([v.ravel() for v in grads.values()]))


@pytest.mark.parametrize("settings", [{}, {"optimizer": "sgd", "clip_norm": 0.5, "class_weights": "balanced"}])
def test_run_is_the_reference_loop_bit_for_bit(settings):
    """loop.Run (the engine at M = 1) ends where a loop written with the reference functions ends: SplitMix64
    shuffles, lora.forward, losses.cross_entropy_grad, lora.backward, clipping and the optimiser."""
    layout = lora.Layout(("a", "b"), (6, 4), 3, 2, True)
    cfg = TrainConfig(epochs=3, batch_size=8, lr=1e-2, form="skip", tap_scaling="none", cv_folds=0, **settings)
    y0, t, labels = data()
    run = Run(layout, scale=2.0, weight_decay=0.1, cfg=cfg, task="classification")
    run.fit(Rows(y0, t), labels, (np.arange(len(labels)), np.arange(0)))
    flat = lora.init(layout, cfg.seed)
    p, g = lora.views(flat, layout), lora.views(grad := np.zeros_like(flat), layout)
    opt, shuffle = from_config(cfg, flat.size, 0.1), SplitMix64(cfg.seed)
    w = np.bincount(labels, minlength=3).astype(np.float64)
    w = (len(labels) / (3 * w)).astype(np.float32)[labels] if settings else None
    onehot = np.eye(3, dtype=np.float32)[labels]
    for _ in range(3):
        perm = shuffle.permutation(len(labels))
        for i in range(0, len(perm), 8):
            idx = perm[i:i + 8]
            y, saved = lora.forward(p, y0[idx], t[idx], layout, 2.0)
            lora.backward(cross_entropy_grad(y, onehot[idx], None if w is None else w[idx]), saved, p, g, layout, 2.0)
            if cfg.clip_norm:
                clip_grad_norm(grad, cfg.clip_norm)
            opt.step(flat, grad, cfg.lr)
    assert np.array_equal(run.result, flat)
