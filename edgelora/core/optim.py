"""Optimisers over flat parameter buffers, in order of increasing complexity, plus schedules.

Each `step(theta, grad, lr)` updates `theta` in place from `grad` (same flat layout); its state is flat
buffers too, so a step is a handful of vectorised numpy operations whatever the number of taps.
"""
from __future__ import annotations

import math

import numpy as np


class SGD:
    """SGD with (optional) momentum and L2 weight decay added to the gradient."""

    def __init__(self, size: int, momentum: float = 0.9, weight_decay: float = 0.0, dtype=np.float32):
        self.momentum, self.weight_decay = momentum, weight_decay  # decay: a number or per-element
        self._decay = bool(np.any(np.asarray(weight_decay) != 0))
        self.v = np.zeros(size, dtype)

    def step(self, theta: np.ndarray, grad: np.ndarray, lr: float) -> None:
        if self._decay:
            grad = grad + self.weight_decay * theta
        if self.momentum:
            self.v *= self.momentum
            self.v += grad
            grad = self.v
        theta -= lr * grad

    def buffers(self) -> dict[str, np.ndarray]:
        return {"v": self.v}


class Adam:
    """Adam (Kingma & Ba); `decoupled=True` is AdamW (Loshchilov & Hutter): decay applied to theta directly."""

    def __init__(self, size: int, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 decoupled: bool = False, dtype=np.float32):
        self.b1, self.b2 = betas
        self.eps, self.weight_decay, self.decoupled = eps, weight_decay, decoupled  # decay: a number or per-element
        self._decay = bool(np.any(np.asarray(weight_decay) != 0))
        self.m, self.v = np.zeros(size, dtype), np.zeros(size, dtype)
        self._tmp = np.zeros(size, dtype)
        self._shrink = (None, None)                                # (lr, 1 - lr * decay) of the last decoupled step
        self.t = 0

    def step(self, theta: np.ndarray, grad: np.ndarray, lr: float) -> None:
        self.t += 1
        if self._decay and not self.decoupled:
            grad = grad + self.weight_decay * theta
        m, v, tmp = self.m, self.v, self._tmp
        m *= self.b1
        np.multiply(grad, 1 - self.b1, out=tmp)                    # no temporaries: a step is ~13 buffer passes
        m += tmp
        v *= self.b2
        np.multiply(grad, grad, out=tmp)
        tmp *= 1 - self.b2
        v += tmp
        if self._decay and self.decoupled:
            if self._shrink[0] != lr:                              # a per-element decay: computed once per lr
                self._shrink = (lr, 1 - lr * self.weight_decay)
            theta *= self._shrink[1]
        # theta -= lr_t * m / (sqrt(v) + eps_t), with the bias corrections folded into lr_t and eps_t
        c1, c2 = 1 - self.b1 ** self.t, 1 - self.b2 ** self.t
        np.sqrt(v, out=tmp)
        tmp += self.eps * math.sqrt(c2)
        np.divide(m, tmp, out=tmp)
        tmp *= lr * math.sqrt(c2) / c1
        theta -= tmp

    def buffers(self) -> dict[str, np.ndarray]:
        return {"m": self.m, "v": self.v}


def AdamW(size: int, weight_decay: float = 1e-2, **kw) -> Adam:
    """Adam with decoupled weight decay."""
    return Adam(size, weight_decay=weight_decay, decoupled=True, **kw)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def from_config(cfg, size: int, weight_decay):
    """The optimiser a TrainConfig names (`optimizer`, `momentum`), with this weight decay (a number or per element)."""
    return OPTIMIZERS[cfg.optimizer](size, weight_decay=weight_decay,
                                     **({"momentum": cfg.momentum} if cfg.optimizer == "sgd" else {}))


def learning_rate(step: int, total: int, base: float, schedule: str = "constant", warmup: int = 0) -> float:
    """Linear warm-up over `warmup` steps, then constant or cosine decay to zero at `total`."""
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    if schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return base


def clip_grad_norm(grad: np.ndarray, max_norm: float) -> float:
    """Scale `grad` in place so its L2 norm is at most max_norm; return the norm before clipping."""
    norm = math.sqrt(float(np.dot(grad, grad)))
    if norm > max_norm:
        grad *= max_norm / (norm + 1e-12)
    return norm
