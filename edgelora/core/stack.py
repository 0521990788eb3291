"""The training engine: a stack of M = G x Mg skip adapters of one layout trained side by side, every product
one batched matrix product over all models. crossval.py trains every fold and recipe with it at once, and
loop.Run one model (M = 1), or one of a holdout's G tap scalings (Mg = 1: each model's parameters are a run of
the buffer, as one model's are); lora.forward/backward are the readable reference it equals at M = 1.

    A_k  (G, d_k, Mg, r)   B (M, K r, C)   bias (M, C)        G groups x Mg models = M
    h    (M, b, K r) = [t_k A_k]          y = y0 + s h B + bias
"""
from __future__ import annotations

import numpy as np

from . import lora


class Stack:
    """M = G x Mg skip adapters of one layout trained side by side: G input groups (one per tap scaling, each
    reading its own version of the taps) of Mg models each; model m = g Mg + j. Each product is one batched
    matrix product over all models; the caller's optimiser steps the flat buffers (per-model weight decay)."""

    def __init__(self, layout: lora.Layout, groups: int, per_group: int, scale: float, decays: np.ndarray, cfg,
                 init_flat: np.ndarray | None = None, form: str = "skip", buffers: tuple | None = None):
        """decays (Mg,): the weight decay of model j of every group. form "last": B fixed (loop.Run's).
        buffers: flat (parameters, gradients, weight decays) as long as `layout_shapes` needs (by default new)."""
        self.layout, self.groups, self.mg, self.m, self.scale = layout, groups, per_group, groups * per_group, scale
        self.train_b = form != "last"
        one = init_flat if init_flat is not None else \
            lora.init(layout, cfg.seed) if self.train_b else lora.init_last(layout, scale)  # as a single run starts
        p1, shapes = lora.views(one, layout), self.layout_shapes(layout, groups, per_group)
        size = sum(int(np.prod(s)) for s in shapes.values())
        self.flat, self.grad, self.decay = buffers or [np.zeros(size, np.float32) for _ in range(3)]
        self.p, self.grads, w = (self._split(buf, shapes) for buf in (self.flat, self.grad, self.decay))
        for key in layout.a_keys:
            self.p[key][:], w[key][:] = p1[key][None, :, None, :], decays[None, None, :, None]
        self.p["B"][:], w["B"][:] = p1["B"], np.tile(decays, groups)[:, None, None] if self.train_b else 0.0
        if layout.bias:
            self.p["bias"][:], w["bias"][:] = p1["bias"], np.tile(decays, groups)[:, None]
        # views for the step: per tap (columns of t, A_k and its gradient as (G, d_k, Mg r)), B^T, the bias
        self.taps = [(slice(a, b), *(q[key].reshape(groups, b - a, -1) for q in (self.p, self.grads)))
                     for key, (a, b) in zip(layout.a_keys, layout.bounds)]
        self.bt = self.p["B"].transpose(0, 2, 1)
        self.bias = (self.p["bias"][:, None, :], self.grads["bias"][:, None, :]) if layout.bias else None
        self.ones = np.ones((1, cfg.batch_size), np.float32)                      # sums over a batch (grows)

    def _split(self, buf: np.ndarray, shapes: dict) -> dict[str, np.ndarray]:
        """Named views of a flat buffer: each parameter's models side by side, or with one model per group
        model by model, each model's parameters one run of `buf` in lora's layout (`model`)."""
        if self.mg > 1:
            return lora.split(buf, shapes)
        rows, out, i = buf.reshape(self.m, -1), {}, 0
        for name, shape in shapes.items():
            n = int(np.prod(shape[1:]))
            out[name] = rows[:, i:i + n].reshape(shape)     # a view: only the model axis is strided
            i += n
        return out

    def model(self, buf: np.ndarray, m: int) -> np.ndarray:
        """Model m's run of a flat buffer (parameters, gradients, an optimiser's state) in lora's layout: one
        model's own flat buffer, a view (one model per group)."""
        assert self.mg == 1, "models are side by side within each parameter when a group holds several"
        return buf.reshape(self.m, -1)[m]

    @staticmethod
    def layout_shapes(layout: lora.Layout, groups: int, per_group: int) -> dict[str, tuple[int, ...]]:
        """Named shapes of the stacked parameters (A per tap, B, bias), in buffer order."""
        m = groups * per_group
        shapes = {**{key: (groups, d, per_group, layout.r) for key, d in zip(layout.a_keys, layout.widths)},
                  "B": (m, len(layout.taps) * layout.r, layout.num_outputs)}
        return {**shapes, "bias": (m, layout.num_outputs)} if layout.bias else shapes

    def forward(self, y0: np.ndarray, t: np.ndarray, out: np.ndarray | None = None):
        """y0, t  # (b, C), (G, b, D)  ->  y (M, b, C) (into `out` if given), h (M, b, K r)."""
        (g, mg, r), n = (self.groups, self.mg, self.layout.r), t.shape[1]
        hk = np.empty((g, n, len(self.taps), mg * r), np.float32)                # per tap: (G, b, Mg r)
        for k, (cols, a, _) in enumerate(self.taps):
            np.matmul(t[:, :, cols], a, out=hk[:, :, k])
        h = hk.reshape(g, n, -1, mg, r).transpose(0, 3, 1, 2, 4).reshape(self.m, n, -1)   # a copy, per model
        y = np.matmul(h, self.p["B"], out=out)
        if self.scale != 1.0:
            y *= self.scale
        y += y0
        if self.bias:
            y += self.bias[0]
        return y, h

    def backward(self, g: np.ndarray, h: np.ndarray, t: np.ndarray) -> None:
        """Gradients into self.grads from g (M, b, C): each model's weighted dL/dy per sample (scaled in place)."""
        (g_, mg, r), n = (self.groups, self.mg, self.layout.r), t.shape[1]
        if self.bias:                  # sum over the batch as a product: a short-axis reduction costs 5-15 us, this 1-2
            self.ones = self.ones if n <= self.ones.shape[1] else np.ones((1, n), np.float32)
            np.matmul(self.ones[:, :n], g, out=self.bias[1])
        if self.scale != 1.0:
            g *= self.scale
        if self.train_b:                                     # else B stays fixed: its gradient stays 0
            np.matmul(h.transpose(0, 2, 1), g, out=self.grads["B"])
        gh = np.matmul(g, self.bt).reshape(g_, mg, n, -1, r)                          # (G, Mg, b, K, r)
        gh = gh.transpose(0, 2, 3, 1, 4).reshape(g_, n, -1, mg * r)                    # (G, b, K, Mg r): a copy
        tt = t.transpose(0, 2, 1)
        for k, (cols, _, da) in enumerate(self.taps):
            np.matmul(tt[:, cols], gh[:, :, k], out=da)

