"""A backbone as a chain of simple ops over numpy weights: what backprop.py runs forward and backward.

graphs/onnx_chain.py reads it from a bundle's ONNX graph (the initializers are the weights), so the numpy
engine, the deep adapters and device_bench's torch baselines all start from the very same frozen weights.
Op kinds: linear | conv | affine (inference-mode batch-norm: x a + c per channel) | relu | maxpool | mean |
transpose | reshape.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Op:
    """One step of the chain; `layer` indexes Chain.weights for linear/conv."""
    kind: str
    layer: int = -1
    attrs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class WeightName:
    """Where a weight layer lives in the ONNX graph: the initializer holding W and how it is stored there
    (`transposed`: Gemm transB=1, (d_out, d_in); conv weights are (O, C, *k))."""
    initializer: str
    transposed: bool = False


@dataclass
class Chain:
    """A backbone as ops + weight layers. Linear: W (d_in, d_out); conv: W (O, C, *k) as in ONNX."""
    ops: list[Op]
    weights: list[tuple[np.ndarray, np.ndarray]]
    mean: np.ndarray | None               # preprocessing of the manifest (applied before the chain)
    std: np.ndarray | None
    manifest: Any                         # the bundle's Manifest
    names: list[WeightName] = field(default_factory=list)  # one per weight layer

    @property
    def num_layers(self) -> int:
        return len(self.weights)

    def prep(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        return x if self.mean is None else ((x - self.mean) / self.std).astype(np.float32)


def layer_shapes(chain: Chain) -> list[tuple[int, int]]:
    """(fan_in, fan_out) of each weight layer's matrix form: linear d_in x d_out, conv C*prod(k) x O."""
    return [(int(np.prod(w.shape[1:])), w.shape[0]) if w.ndim > 2 else w.shape for w, _ in chain.weights]


def matrices(chain: Chain) -> list[tuple[np.ndarray, np.ndarray]]:
    """Frozen weights in matrix form (fan_in, fan_out) + bias."""
    return [(np.ascontiguousarray(w.reshape(w.shape[0], -1).T) if w.ndim > 2 else w, b) for w, b in chain.weights]


def to_onnx_layout(delta: np.ndarray, w: np.ndarray, name: WeightName) -> np.ndarray:
    """A matrix-form update (fan_in, fan_out) in the layout of the ONNX initializer `w` it adds to."""
    if w.ndim > 2:
        return np.ascontiguousarray(delta.T).reshape(w.shape)
    return np.ascontiguousarray(delta.T) if name.transposed else delta


def reshape_like(x: np.ndarray, op: Op) -> np.ndarray:
    """Forward of a shape op (Reshape/Flatten/Unsqueeze/Squeeze) on a batch."""
    t, a, arg = op.attrs["node"], op.attrs["a"], op.attrs["arg"]
    if t == "Flatten":
        axis = a.get("axis", 1)
        return x.reshape(int(np.prod(x.shape[:axis])), -1)
    if t == "Reshape":  # 0 copies the input's dim unless allowzero (then it is a real 0)
        shape = [x.shape[i] if s == 0 and not a.get("allowzero", 0) else int(s) for i, s in enumerate(arg)]
        return x.reshape(shape)
    axes = sorted(int(v) for v in (a.get("axes") if "axes" in a else arg))
    if t == "Unsqueeze":
        for ax in axes:
            x = np.expand_dims(x, ax)
        return x
    return np.squeeze(x, axis=tuple(axes))
