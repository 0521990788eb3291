"""Numpy forward and backward through a frozen backbone (core/chain.py): the deep adapters' engine, and
device_bench's FT-All, FT-Last, LoRA-All, LoRA-Last baselines.

Each weight layer has a mode: "frozen", "full" (W and b trained) or "lora" (W frozen, y += s (x A) B,
A (d_in, r), B (r, d_out); conv layers use im2col columns as x, PEFT's conv LoRA: a k-sized conv to r
channels, then a 1x1 conv). Trainable parameters live in one flat buffer (edgelora's convention), so the
optimisers of edgelora.core.optim update them in one vectorised step.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .chain import Chain, Op, layer_shapes, matrices, reshape_like
from .lora import split

MODES = ("frozen", "full", "lora")


def param_shapes(chain: Chain, modes: list[str], r: int) -> dict[str, tuple[int, ...]]:
    if len(modes) != chain.num_layers or any(m not in MODES for m in modes):
        raise ValueError(f"expected {chain.num_layers} modes out of {MODES}, found {modes}")
    shapes = {}
    for i, ((fi, fo), m) in enumerate(zip(layer_shapes(chain), modes)):
        if m == "full":
            shapes[f"W{i}"], shapes[f"b{i}"] = (fi, fo), (fo,)
        elif m == "lora":
            shapes[f"A{i}"], shapes[f"B{i}"] = (fi, r), (r, fo)
    return shapes


def init_params(chain: Chain, modes: list[str], r: int, seed: int) -> tuple[np.ndarray, dict]:
    """Flat buffer: full layers start from the backbone, A ~ U(+-1/sqrt(fan_in)) (PEFT), B = 0."""
    shapes = param_shapes(chain, modes, r)
    flat = np.zeros(sum(int(np.prod(s)) for s in shapes.values()), np.float32)
    p = split(flat, shapes)
    rng = np.random.default_rng(seed)
    for i, ((w, b), m) in enumerate(zip(matrices(chain), modes)):
        if m == "full":
            p[f"W{i}"][:], p[f"b{i}"][:] = w, b
        elif m == "lora":
            p[f"A{i}"][:] = rng.uniform(-1.0, 1.0, p[f"A{i}"].shape) / np.sqrt(w.shape[0])
    return flat, shapes


def first_trainable_op(chain: Chain, modes: list[str]) -> int:
    """Ops before this index touch no trainable parameter: the frozen prefix (FT-Last/LoRA-Last's backbone)."""
    return next((j for j, op in enumerate(chain.ops) if op.kind in ("linear", "conv") and modes[op.layer] != "frozen"),
                len(chain.ops))


class Engine:
    """forward(x) -> (y, saved) and backward(dy, saved) -> grads for one chain, modes and rank."""

    def __init__(self, chain: Chain, modes: list[str], r: int = 4, scale: float = 2.0):
        self.chain, self.modes, self.scale, self.r = chain, list(modes), scale, r
        self.shapes = param_shapes(chain, modes, r)
        self.frozen = matrices(chain)
        self.start = first_trainable_op(chain, modes)

    def prefix(self, x: np.ndarray) -> np.ndarray:
        """The frozen ops before the first trainable layer (no saved values)."""
        for op in self.chain.ops[:self.start]:
            x = self._op(op, x, None)[0]
        return x

    def forward(self, p: dict, x: np.ndarray, save: bool = True, start: int | None = None):
        """Run ops[start:] (default: after the frozen prefix); saved values for backward if `save`."""
        saved = []
        for op in self.chain.ops[self.start if start is None else start:]:
            x, s = self._op(op, x, p)
            if save:
                saved.append(s)
        return x, saved

    def backward(self, dy: np.ndarray, saved: list, p: dict, g: dict) -> None:
        """dL/dy -> dL/dparam written into g (views of a flat gradient buffer)."""
        ops = self.chain.ops[self.start:]
        for j in range(len(ops) - 1, -1, -1):
            dy = self._back(ops[j], dy, saved[j], p, g, need_dx=j > 0)

    # --- ops -------------------------------------------------------------------------------------------
    def _op(self, op: Op, x: np.ndarray, p: dict | None):
        k = op.kind
        if k in ("linear", "conv"):
            return self._weight(op, x, p)
        if k == "relu":
            return np.maximum(x, 0.0), x > 0
        if k == "affine":
            return x * _channel(op.attrs["a"], x) + _channel(op.attrs["c"], x), None
        if k == "maxpool":
            win, shape = _windows(x, op.attrs["k"])
            arg = win.argmax(axis=-1)
            return np.take_along_axis(win, arg[..., None], -1)[..., 0], (arg, shape, x.shape)
        if k == "mean":
            axes = op.attrs["axes"] if op.attrs["axes"] is not None else tuple(range(2, x.ndim))
            return x.mean(axis=axes, keepdims=op.attrs["keepdims"]), (x.shape, axes)
        if k == "transpose":
            return x.transpose(op.attrs["perm"]), None
        if k == "reshape":
            return reshape_like(x, op), x.shape
        raise AssertionError(k)

    def _weight(self, op: Op, x: np.ndarray, p: dict | None):
        i, mode = op.layer, self.modes[op.layer]
        n = len(x)
        if op.kind == "conv":
            cols, spatial = _im2col(x, self.chain.weights[i][0].shape[2:], op.attrs["pads"], op.attrs["strides"])
        else:
            cols, spatial = x, None
        w, b = (p[f"W{i}"], p[f"b{i}"]) if mode == "full" and p is not None else self.frozen[i]
        z = cols @ w
        z += b
        h = None
        if mode == "lora" and p is not None:
            h = cols @ p[f"A{i}"]
            z += self.scale * (h @ p[f"B{i}"])
        if spatial is not None:
            z = np.moveaxis(z.reshape(n, *spatial, -1), -1, 1)
        return z, (cols, h, x.shape, spatial)

    def _back(self, op: Op, dy: np.ndarray, saved, p: dict, g: dict, need_dx: bool):
        k = op.kind
        if k in ("linear", "conv"):
            return self._weight_back(op, dy, saved, p, g, need_dx)
        if not need_dx:
            return None
        if k == "relu":
            return dy * saved
        if k == "affine":
            return dy * _channel(op.attrs["a"], dy)
        if k == "maxpool":
            arg, shape, xshape = saved
            win = np.zeros(arg.shape + (int(np.prod(shape[1])),), dy.dtype)
            np.put_along_axis(win, arg[..., None], dy[..., None], -1)
            return _unwindows(win, shape, xshape)
        if k == "mean":
            xshape, axes = saved
            count = int(np.prod([xshape[a] for a in axes]))
            if not op.attrs["keepdims"]:
                dy = np.expand_dims(dy, axes)
            return np.broadcast_to(dy / count, xshape)
        if k == "transpose":
            return dy.transpose(np.argsort(op.attrs["perm"]))
        if k == "reshape":
            return dy.reshape(saved)
        raise AssertionError(k)

    def _weight_back(self, op: Op, dy, saved, p, g, need_dx: bool):
        i, mode = op.layer, self.modes[op.layer]
        cols, h, xshape, spatial = saved
        if spatial is not None:
            dy = np.moveaxis(dy, 1, -1).reshape(len(cols), -1)
        w = p[f"W{i}"] if mode == "full" else self.frozen[i][0]
        if mode == "full":
            np.matmul(cols.T, dy, out=g[f"W{i}"])
            np.add.reduce(dy, axis=0, out=g[f"b{i}"])
        elif mode == "lora":
            a, bm, s = p[f"A{i}"], p[f"B{i}"], self.scale
            dh = dy @ bm.T                                 # (M, r)
            np.matmul(h.T, dy, out=g[f"B{i}"])
            g[f"B{i}"] *= s
            np.matmul(cols.T, dh, out=g[f"A{i}"])
            g[f"A{i}"] *= s
        if not need_dx:
            return None
        dcols = dy @ w.T
        if mode == "lora":
            dcols += (self.scale * dh) @ a.T
        if spatial is None:
            return dcols
        return _col2im(dcols, xshape, self.chain.weights[i][0].shape[2:], op.attrs["pads"], op.attrs["strides"])


def _channel(v: np.ndarray, x: np.ndarray) -> np.ndarray:
    """A per-channel vector shaped to broadcast along axis 1 of x (N, C, *S)."""
    return v.reshape((1, -1) + (1,) * (x.ndim - 2))


def _im2col(x: np.ndarray, k: tuple, pads: tuple, strides: tuple):
    """x (N, C, *S) -> columns (N * prod(S_out), C * prod(k)) ordered like W.reshape(O, -1), and S_out."""
    nd = len(k)
    xp = np.pad(x, [(0, 0), (0, 0)] + [(q, q) for q in pads]) if any(pads) else x
    win = sliding_window_view(xp, tuple(k), axis=tuple(range(2, 2 + nd)))        # (N, C, *S_full, *k)
    win = win[(slice(None), slice(None)) + tuple(slice(None, None, st) for st in strides)]  # (N, C, *S_out, *k)
    spatial = win.shape[2:2 + nd]
    perm = (0,) + tuple(range(2, 2 + nd)) + (1,) + tuple(range(2 + nd, 2 + 2 * nd))
    return win.transpose(perm).reshape(-1, x.shape[1] * int(np.prod(k))), spatial


def _col2im(dcols: np.ndarray, xshape: tuple, k: tuple, pads: tuple, strides: tuple) -> np.ndarray:
    """Adjoint of _im2col: scatter-add the column gradients back onto the (padded) input."""
    n, c = xshape[0], xshape[1]
    padded = tuple(s + 2 * q for s, q in zip(xshape[2:], pads))
    spatial = tuple((s - kk) // st + 1 for s, kk, st in zip(padded, k, strides))
    d = dcols.reshape(n, *spatial, c, *k)
    dx = np.zeros((n, c) + padded, dcols.dtype)
    for off in np.ndindex(*k):
        sl = (slice(None), slice(None)) + tuple(slice(o, o + st * (s - 1) + 1, st)
                                                for o, s, st in zip(off, spatial, strides))
        dx[sl] += np.moveaxis(d[(Ellipsis,) + off], -1, 1)
    return dx[(slice(None), slice(None)) + tuple(slice(q, q + s) for q, s in zip(pads, xshape[2:]))]


def _windows(x: np.ndarray, k: tuple):
    """Non-overlapping pooling windows: x (N, C, *S) -> (N, C, *S//k, prod(k)) (floor mode)."""
    nd = len(k)
    out = tuple(s // kk for s, kk in zip(x.shape[2:], k))
    crop = x[(slice(None), slice(None)) + tuple(slice(0, o * kk) for o, kk in zip(out, k))]
    split = crop.reshape(x.shape[:2] + tuple(v for o, kk in zip(out, k) for v in (o, kk)))
    perm = (0, 1) + tuple(2 + 2 * j for j in range(nd)) + tuple(3 + 2 * j for j in range(nd))
    return split.transpose(perm).reshape(x.shape[:2] + out + (-1,)), (out, k)


def _unwindows(win: np.ndarray, shape, xshape: tuple) -> np.ndarray:
    out, k = shape
    nd = len(k)
    split = win.reshape(win.shape[:2] + out + tuple(k))
    perm = (0, 1) + tuple(v for j in range(nd) for v in (2 + j, 2 + nd + j))
    crop = split.transpose(perm).reshape(win.shape[:2] + tuple(o * kk for o, kk in zip(out, k)))
    dx = np.zeros(xshape, win.dtype)
    dx[(slice(None), slice(None)) + tuple(slice(0, s) for s in crop.shape[2:])] = crop
    return dx
