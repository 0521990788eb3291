"""Skip-LoRA adapter math (Skip2-LoRA, arXiv 2410.21073): pure numpy forward and backward.

    y = y0 + s * sum_k (t_k @ A_k) @ B_k  (+ b)        s = alpha / r
      = y0 + s * h @ B  (+ b)                           h = [t_1 A_1 | ... | t_K A_K],  B = [B_1; ...; B_K]

The backward pass never enters the backbone: dB = s h^T g, dA_k = s t_k^T (g B_k^T), db = sum g.
All parameters live in one flat buffer; `views` gives named views into it, so gradients and optimiser
state are flat buffers with the same layout and an optimiser update is one vectorised step.

A is kept per tap rather than as one block-diagonal (D, K r) matrix: with one wide input tap and narrow
hidden taps (the paper's MLPs) the block-diagonal product does K times the multiply-adds and measured
no faster. The B products of all taps are fused into one.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .shape import default_alpha  # noqa: F401  (lora.default_alpha: the shape's default, 2 r)
from .shuffle import init_values


@dataclass(frozen=True)
class Layout:
    """The static shape of a set of skip adapters."""
    taps: tuple[str, ...]
    widths: tuple[int, ...]   # d_k per tap
    num_outputs: int          # C
    r: int                    # rank (PEFT's name, as in AdapterShape)
    bias: bool = False        # learn an output bias b (C,)

    @cached_property
    def bounds(self) -> list[tuple[int, int]]:
        """Column range of each tap in the concatenated taps t (N, D = sum d_k)."""
        ends = np.cumsum((0,) + self.widths).tolist()
        return list(zip(ends[:-1], ends[1:]))

    @cached_property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        s = {f"A.{name}": (d, self.r) for name, d in zip(self.taps, self.widths)}
        s["B"] = (len(self.taps) * self.r, self.num_outputs)
        if self.bias:
            s["bias"] = (self.num_outputs,)
        return s

    @cached_property
    def size(self) -> int:
        return sum(int(np.prod(s)) for s in self.shapes.values())

    @cached_property
    def a_keys(self) -> list[str]:
        return [f"A.{name}" for name in self.taps]


def views(flat: np.ndarray, layout: Layout) -> dict[str, np.ndarray]:
    """Named views into a flat parameter (or gradient) buffer."""
    return split(flat, layout.shapes)


def split(flat: np.ndarray, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Consecutive views of `flat` with the given names and shapes."""
    out, i = {}, 0
    for name, shape in shapes.items():
        n = int(np.prod(shape))
        out[name] = flat[i:i + n].reshape(shape)
        i += n
    return out


def tap_A(p: dict, layout: Layout, k: int) -> np.ndarray:
    """A_k (d_k, r) of tap k."""
    return p[layout.a_keys[k]]


def tap_B(p: dict, layout: Layout, k: int) -> np.ndarray:
    """B_k (r, C) of tap k."""
    return p["B"][k * layout.r:(k + 1) * layout.r]


def init(layout: Layout, seed: int, dtype=np.float32) -> np.ndarray:
    """A ~ U(-1/sqrt(d), 1/sqrt(d)) (PEFT's kaiming-uniform bound), B = 0, bias = 0: y == y0 at start.
    The draws come from `shuffle.SplitMix64`, so every training client starts from the same A."""
    flat = np.zeros(layout.size, dtype)
    p = views(flat, layout)
    for k, a in enumerate(init_values(layout.widths, layout.r, seed)):
        tap_A(p, layout, k)[:] = a
    return flat


def init_last(layout: Layout, scale: float) -> np.ndarray:
    """The 'last' form (FT-Last on the cache): r = C, A = 0, and B = 0 except the last tap's block, I / s, held
    fixed while A trains, so y = y0 + t_K A_K (+ b): a dense update of the last layer through its input."""
    assert layout.r == layout.num_outputs, "the last form has r = C"
    flat = np.zeros(layout.size, np.float32)
    tap_B(views(flat, layout), layout, len(layout.taps) - 1)[:] = np.eye(layout.r, dtype=np.float32) / scale
    return flat


def forward(p: dict, y0: np.ndarray, t: np.ndarray, layout: Layout, scale: float):
    """y0, t  # (N, C), (N, D)  ->  y (N, C), saved = (t, h)  with h (N, K r)."""
    r = layout.r
    h = np.empty((len(t), len(layout.taps) * r), t.dtype)
    for k, (a, b) in enumerate(layout.bounds):
        np.matmul(t[:, a:b], p[layout.a_keys[k]], out=h[:, k * r:(k + 1) * r])
    y = h @ p["B"]
    y *= scale
    y += y0
    if layout.bias:
        y += p["bias"]
    return y, (t, h)


def backward(g: np.ndarray, saved, p: dict, grads: dict, layout: Layout, scale: float) -> None:
    """g = dL/dy (N, C): write dL/dparam into `grads` (views of a flat buffer, same keys as `p`)."""
    t, h = saved
    if layout.bias:
        np.add.reduce(g, axis=0, out=grads["bias"])
    g = g * scale
    np.matmul(h.T, g, out=grads["B"])                 # (K r, C)
    gh = g @ p["B"].T                                 # (N, K r)
    r = layout.r
    for k, (a, b) in enumerate(layout.bounds):
        np.matmul(t[:, a:b].T, gh[:, k * r:(k + 1) * r], out=grads[layout.a_keys[k]])


# The same map in the other forms it takes: a dense weight (serving, deployment), PEFT's tensors (files),
# and the two edits made to it outside training. Every module that needs one of these calls it from here.

def tap_weight(p: dict, layout: Layout, scale: float, k: int) -> np.ndarray:
    """s A_k B_k (d_k, C): tap k's adapter as one dense weight (PEFT's `get_delta_weight`, transposed)."""
    return scale * (tap_A(p, layout, k) @ tap_B(p, layout, k))


def dense_weight(p: dict, layout: Layout, scale: float) -> np.ndarray:
    """W = s [A_1 B_1; ...; A_K B_K] (D, C):  t @ W + bias == forward(p, y0, t) - y0."""
    W = np.empty((sum(layout.widths), layout.num_outputs), p["B"].dtype)
    for k, (a, b) in enumerate(layout.bounds):
        W[a:b] = tap_weight(p, layout, scale, k)
    return W


def output_bias(p: dict, layout: Layout) -> np.ndarray:
    """b (C,): the learned output bias, zeros when the layout has none."""
    return p["bias"].copy() if layout.bias else np.zeros(layout.num_outputs, p["B"].dtype)


def folded(p: dict, layout: Layout, scale: float) -> np.ndarray:
    """M = [I; W; b] (C + D + 1, C):  [y0 | t | 1] @ M == forward(p, y0, t), the whole adapter as one product."""
    c, W = layout.num_outputs, dense_weight(p, layout, scale)
    return np.concatenate([np.eye(c, dtype=W.dtype), W, output_bias(p, layout)[None]])


def peft_views(p: dict, layout: Layout) -> dict[str, np.ndarray]:
    """PEFT's orientation, as writable views of p: `<tap>.lora_A.weight` A_k^T (r, d_k), `<tap>.lora_B.weight`
    B_k^T (C, r), and `bias` (C,) when learned. Saving copies them out; loading assigns into them."""
    out = {}
    for k, name in enumerate(layout.taps):
        out[f"{name}.lora_A.weight"] = tap_A(p, layout, k).T
        out[f"{name}.lora_B.weight"] = tap_B(p, layout, k).T
    if layout.bias:
        out["bias"] = p["bias"]
    return out


def tap_dropout(t: np.ndarray, rate: float, rng: np.random.Generator, mask: np.ndarray | None = None) -> np.ndarray:
    """Inverted dropout on the taps t (N, D): each value kept with probability 1 - rate and scaled by 1 / (1 - rate).
    mask: a draw to apply instead of drawing one (rng.random(t.shape, float32) < 1 - rate), shared by runs."""
    keep = 1.0 - rate
    return t * (rng.random(t.shape, np.float32) < keep if mask is None else mask) / keep


def mask_classes(p: dict, layout: Layout, classes: np.ndarray) -> None:
    """Zero the B columns (and bias) of output columns `classes`: the adapter leaves those outputs at y0."""
    p["B"][:, classes] = 0.0
    if layout.bias:
        p["bias"][classes] = 0.0


def fold_standardizer(flat: np.ndarray, layout: Layout, scale: float, mu: np.ndarray,
                      inv: np.ndarray) -> np.ndarray:
    """Parameters trained on standardised taps (t - mu) * inv, rewritten to act on raw taps t (exact):
    A_k <- diag(inv_k) A_k and bias <- bias - s * sum_k ((mu_k * inv_k) A_k) B_k."""
    assert layout.bias, "folding the tap means needs an output bias"
    out = flat.astype(np.float64)
    p = views(out, layout)
    shift = np.zeros(layout.num_outputs)
    for k, (a, b) in enumerate(layout.bounds):
        A = p[layout.a_keys[k]]
        shift += ((mu[a:b] * inv[a:b]) @ A) @ tap_B(p, layout, k)
        A *= inv[a:b, None]
    p["bias"] -= scale * shift
    return out.astype(np.float32)
