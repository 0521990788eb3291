"""Numpy forward and backward through a frozen backbone (core/chain.py): the deep adapters' engine, and
device_bench's FT-All, FT-Last, LoRA-All, LoRA-Last baselines.

Each weight layer has a mode: "frozen", "full" (W and b trained) or "lora" (W frozen, y += s (x A) B,
A (d_in, r), B (r, d_out); conv layers use im2col columns as x, PEFT's conv LoRA: a k-sized conv to r
channels, then a 1x1 conv). Trainable parameters live in one flat buffer (edgelora's convention), so the
optimisers of edgelora.core.optim update them in one vectorised step.

A LoRA layer whose d_in x d_out is small against the rank (a conv's few channels, a 96 x 96 layer at r 32)
is run merged, as LoRA's own `merge` does: y = x (W + s A B), and the gradient of the merged update
D = s A B, dD = x^T dy, gives dA = s dD B^T and dB = s A^T dD. The same function, fewer multiply-adds
(`merged` counts them both ways per layer).
"""
from __future__ import annotations

import numpy as np

from .chain import Chain, Op, layer_shapes, matrices, reshape_like
from .kernels import col2im, im2col, maxpool, maxpool_back, mm
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


def first_trainable_op(ops: list[Op], modes: list[str]) -> int:
    """Ops before this index touch no trainable parameter: the frozen prefix (FT-Last/LoRA-Last's backbone)."""
    return next((j for j, op in enumerate(ops) if op.kind in ("linear", "conv") and modes[op.layer] != "frozen"),
                len(ops))


def fold_affine(chain: Chain, modes: list[str]) -> tuple[list[Op], list[tuple], list]:
    """The chain's ops with each per-channel affine (an inference batch-norm) that directly follows a frozen or
    LoRA weight layer folded into it: (W, b) -> (W a, b a + c), and the layer's LoRA update scaled by a too
    (one op fewer a step, forward and backward). Returns the ops, every layer's (W, b) and its gain a (None:
    nothing folded). A fully trained layer keeps its affine: its W is a parameter."""
    ops, frozen, gain = [], list(matrices(chain)), [None] * chain.num_layers
    for op in chain.ops:
        prev = ops[-1] if ops else None
        if op.kind == "affine" and prev is not None and prev.kind in ("linear", "conv") \
                and modes[prev.layer] != "full" and gain[prev.layer] is None:
            w, b = frozen[prev.layer]
            a, c = (np.asarray(op.attrs[k], w.dtype).ravel() for k in ("a", "c"))
            if a.size == c.size == w.shape[1]:
                frozen[prev.layer], gain[prev.layer] = (w * a, b * a + c), a
                continue
        ops.append(op)
    return ops, frozen, gain


class Stem:
    """A first trainable layer's input columns and frozen output (cols @ W + b) for every sample, row-major per
    sample (a conv layer has prod(spatial) rows per sample)."""

    def __init__(self, cols: np.ndarray, base: np.ndarray, spatial: tuple | None):
        self.cols, self.base, self.spatial = cols, base, spatial
        self.per = int(np.prod(spatial)) if spatial else 1

    def rows(self, b: np.ndarray) -> tuple:
        """Engine.forward's `first` for samples b: copies of their columns and frozen output (whole per-sample
        blocks taken at once)."""
        b, per = np.asarray(b), self.per
        cols = self.cols.reshape(-1, per * self.cols.shape[1]).take(b, axis=0).reshape(-1, self.cols.shape[1])
        base = self.base.reshape(-1, per * self.base.shape[1]).take(b, axis=0).reshape(-1, self.base.shape[1])
        return cols, base, self.spatial, len(b)

    @property
    def nbytes(self) -> int:
        return self.cols.nbytes + self.base.nbytes


class Engine:
    """forward(x) -> (y, saved) and backward(dy, saved) -> grads for one chain, modes and rank."""

    def __init__(self, chain: Chain, modes: list[str], r: int = 4, scale: float = 2.0):
        self.chain, self.modes, self.scale, self.r = chain, list(modes), scale, r
        self.shapes = param_shapes(chain, modes, r)
        self.ops, self.frozen, self.gain = fold_affine(chain, self.modes)
        self.start = first_trainable_op(self.ops, modes)
        first = self.ops[self.start].layer if self.start < len(self.ops) else None
        self.merged = [m == "lora" and merged(fi, fo, r, i == first)
                       for i, ((fi, fo), m) in enumerate(zip(layer_shapes(chain), self.modes))]

    def prefix(self, x: np.ndarray) -> np.ndarray:
        """The frozen ops before the first trainable layer (no saved values)."""
        for op in self.ops[:self.start]:
            x = self._op(op, x, None)[0]
        return x

    def forward(self, p: dict, x: np.ndarray | None, save: bool = True, start: int | None = None,
                first: tuple | None = None):
        """Run ops[start:] (default: after the frozen prefix); saved values for backward if `save`. `first`:
        the first trainable layer's rows of a Stem (Stem.rows) in place of x (its inputs never change)."""
        saved = []
        for j, op in enumerate(self.ops[self.start if start is None else start:]):
            x, s = self._weight(op, x, p, first) if j == 0 and first is not None else self._op(op, x, p)
            if save:
                saved.append(s)
        return x, saved

    def stem(self, x: np.ndarray, max_bytes: int) -> "Stem | None":
        """The first trainable layer's input columns and frozen output for every row of prepared inputs x:
        constant while LoRA trains (only its low-rank term moves), so computed once, not every step. None
        when that layer trains fully or the two arrays would take more than max_bytes."""
        op = self.ops[self.start] if self.start < len(self.ops) else None
        if op is None or self.modes[op.layer] != "lora":
            return None
        one = self._columns(op, self.prefix(x[:1]))
        if len(x) * (one[0].nbytes + one[1].nbytes) > max_bytes:
            return None
        per = len(one[0])                      # rows a sample
        cols = np.empty((len(x) * per, one[0].shape[1]), one[0].dtype)
        base = np.empty((len(x) * per, one[1].shape[1]), one[1].dtype)
        for a in range(0, len(x), 32):         # filled in place: no second copy while concatenating
            cols[a * per:(a + 32) * per], base[a * per:(a + 32) * per] = self._columns(op, self.prefix(x[a:a + 32]))[:2]
        return Stem(cols, base, one[2])

    def _columns(self, op: Op, x: np.ndarray, wb: tuple | None = None):
        """(columns, output cols @ W + b, spatial shape) of a weight layer's input x (W, b: wb, or frozen)."""
        if op.kind == "conv":
            cols, spatial = im2col(x, self.chain.weights[op.layer][0].shape[2:], op.attrs["pads"], op.attrs["strides"])
        else:
            cols, spatial = x, None
        w, b = wb or self.frozen[op.layer]
        z = mm(cols, w)
        z += b
        return cols, z, spatial

    def backward(self, dy: np.ndarray, saved: list, p: dict, g: dict) -> None:
        """dL/dy -> dL/dparam written into g (views of a flat gradient buffer)."""
        ops = self.ops[self.start:]
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
            y = x * _channel(op.attrs["a"], x)
            y += _channel(op.attrs["c"], x)
            return y, None
        if k == "maxpool":
            return maxpool(x, op.attrs["k"])
        if k == "mean":
            axes = op.attrs["axes"] if op.attrs["axes"] is not None else tuple(range(2, x.ndim))
            return x.mean(axis=axes, keepdims=op.attrs["keepdims"]), (x.shape, axes)
        if k == "transpose":
            return x.transpose(op.attrs["perm"]), None
        if k == "reshape":
            return reshape_like(x, op), x.shape
        raise AssertionError(k)

    def _weight(self, op: Op, x: np.ndarray | None, p: dict | None, first: tuple | None = None):
        i, mode = op.layer, self.modes[op.layer]
        lora = mode == "lora" and p is not None
        bg = self._b(p, i) if lora else None   # s B, the folded gain applied to its columns
        d = p[f"A{i}"] @ bg if lora and self.merged[i] else None   # merged: the layer's weight is W + d
        if first is not None:                  # a Stem's rows: columns and frozen output, computed once
            cols, z, spatial, n = first
            xshape = None                      # the first trainable layer passes no gradient further down
            if d is not None:
                z += mm(cols, d)
        else:
            n, xshape = len(x), x.shape
            w, b = (p[f"W{i}"], p[f"b{i}"]) if mode == "full" and p is not None else self.frozen[i]
            cols, z, spatial = self._columns(op, x, (w if d is None else w + d, b))
        h = d
        if lora and d is None:
            h = cols @ p[f"A{i}"]
            z += mm(h, bg)
        if spatial is not None:                    # (N S, O) rows -> (N, O, *S), a view when z is column-major
            z = np.moveaxis(z.T.reshape(-1, n, *spatial), 0, 1)
        return z, (cols, h, xshape, spatial)

    def _b(self, p: dict, i: int) -> np.ndarray:
        """s B_i, times the gain folded into layer i (fold_affine) when there is one."""
        b = self.scale * p[f"B{i}"]
        return b if self.gain[i] is None else b * self.gain[i]

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
            return maxpool_back(dy, *saved)
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
        if spatial is not None:                    # (N, O, *S) -> (N S, O), a view when dy is channel-major
            dy = np.moveaxis(dy, 1, 0).reshape(dy.shape[1], -1).T
        w = p[f"W{i}"] if mode == "full" else self.frozen[i][0]
        if mode == "full":
            np.matmul(cols.T, dy, out=g[f"W{i}"])
            np.add.reduce(dy, axis=0, out=g[f"b{i}"])
        elif mode == "lora":
            a, bm, s, gn = p[f"A{i}"], p[f"B{i}"], self.scale, self.gain[i]
            if self.merged[i]:
                dd = s * (cols.T @ dy)                     # (d_in, d_out): s dL/d(A B), times the gain
                if gn is not None:
                    dd *= gn
                np.matmul(a.T, dd, out=g[f"B{i}"])
                np.matmul(dd, bm.T, out=g[f"A{i}"])
                w = w + h
            else:
                dh = dy @ self._b(p, i).T                  # (M, r)
                np.matmul(h.T, dy, out=g[f"B{i}"])
                g[f"B{i}"] *= s if gn is None else s * gn
                np.matmul(cols.T, dh, out=g[f"A{i}"])
        if not need_dx:
            return None
        dcols = mm(dy, w.T)
        if mode == "lora" and not self.merged[i]:
            dcols += mm(dh, a.T)
        if spatial is None:
            return dcols
        return col2im(dcols, xshape, self.chain.weights[i][0].shape[2:], op.attrs["pads"], op.attrs["strides"])


def merged(d_in: int, d_out: int, r: int, first: bool) -> bool:
    """Whether a LoRA layer costs fewer multiply-adds a row merged (x (W + s A B): forward, dD, and dx unless
    it is the first trainable layer) than factored (x A, h B, dh, dB, dA, dx; the first layer's frozen x W is
    computed once, by a Stem)."""
    dx = 0 if first else 1
    factored = (0 if first else d_in * d_out) + 2 * d_in * r + 3 * r * d_out + dx * (d_in * d_out + r * d_in)
    return d_in * d_out * (2 + dx) < factored


def _channel(v: np.ndarray, x: np.ndarray) -> np.ndarray:
    """A per-channel vector shaped to broadcast along axis 1 of x (N, C, *S)."""
    return v.reshape((1, -1) + (1,) * (x.ndim - 2))
