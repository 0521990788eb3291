"""Losses as (value, dL/dy) pairs: softmax cross-entropy (optionally class-weighted) and MSE."""
from __future__ import annotations

import numpy as np


def log_softmax(y: np.ndarray) -> np.ndarray:
    """Log-probabilities over the last axis (the classes) of logits y (..., C)."""
    z = y - y.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def cross_entropy(y: np.ndarray, labels: np.ndarray, class_weights: np.ndarray | None = None):
    """y (N, C) logits, labels (N,) -> mean NLL and its gradient (N, C).

    With class weights w the mean is sum_i w_{y_i} nll_i / sum_i w_{y_i}, as in torch.nn.CrossEntropyLoss.
    """
    n = len(y)
    z = y - y.max(axis=1, keepdims=True)
    e = np.exp(z)
    s = e.sum(axis=1, keepdims=True)
    rows = np.arange(n)
    nll = np.log(s[:, 0]) - z[rows, labels]
    e /= s                                       # softmax p
    e[rows, labels] -= 1.0                       # p - onehot
    if class_weights is None:
        e /= n
        return float(nll.mean()), e
    w = class_weights[labels]
    total = w.sum()
    e *= (w / total)[:, None]
    return float((w * nll).sum() / total), e


def cross_entropy_grad(y: np.ndarray, onehot: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """dL/dy of `cross_entropy`, computed in place in y (N, C); onehot (N, C) holds the labels, w (N,) optional
    per-sample class weights (the mean is weighted by them, as in `cross_entropy`)."""
    return loss_grad(y, onehot, 1.0 / len(y) if w is None else (w / np.add.reduce(w))[:, None])


def loss_grad(y: np.ndarray, rows: np.ndarray, share, task: str = "classification",
              shift: np.ndarray | None = None) -> np.ndarray:
    """dL/dy of each sample's loss times its `share`, in place in y (..., N, C): the training engine's loss
    gradient for one model (N, C) or M models at once (M, N, C). rows: one-hot labels (classification) or
    target values (regression); share: a number or (..., N, 1), each sample's share of its model's mean loss.

    Softmax cross-entropy, in float64: float32 exp and sums differ in the last bit between CPUs (numpy's and
    onnxruntime's SIMD kernels), and Adam turns such bits into visible differences within a few epochs.
    Without `shift` (one run): y minus its row maximum, exp in float64 rounded to float32, row sums in float64,
    as the training kit rounds them (kit_graphs._softmax), so numpy, the kit and every client agree. With
    `shift` (N, 1), each sample's largest backbone logit (cross-validation's M models): y minus the shift,
    capped at 80, then exp, sums (as a product) and the division all in float64, rounded once: a reduction
    over the short class axis of (M, N, C) costs 20x the product. Regression: the squared error's mean over C.
    """
    if task != "classification":
        y -= rows
        y *= 2.0 / y.shape[-1] * share
        return y
    if shift is not None:
        z = np.subtract(y, shift, dtype=np.float64)
        np.minimum(z, 80.0, out=z)                           # exp stays finite even if an adapter diverges
        np.exp(z, out=z)
        z /= z @ np.ones((y.shape[-1], 1))
        np.subtract(z, rows, out=y, casting="same_kind")
        y *= share
        return y
    np.subtract(y, np.maximum.reduce(y, axis=-1, keepdims=True), out=y)
    np.exp(y, out=y, dtype=np.float64)                                         # in double, rounded once
    np.divide(y, np.add.reduce(y, axis=-1, keepdims=True, dtype=np.float64), out=y, dtype=y.dtype)
    y -= rows
    y *= share
    return y


def mse(y: np.ndarray, target: np.ndarray):
    """Mean squared error over all elements and its gradient."""
    d = y - target
    return float((d * d).mean()), d * (2.0 / d.size)


def classes_present(targets: np.ndarray) -> np.ndarray:
    """The class indices found in `targets` (checked class indices, >= 0), ascending: np.unique's answer without
    its first call's import of numpy.ma (numpy 2.4: 8-18 ms of a fine-tune process's start)."""
    return np.flatnonzero(np.bincount(targets))


def class_groups(targets: np.ndarray, task: str) -> list[np.ndarray]:
    """The sample indices of each class, in sample order (one group of all samples for regression)."""
    if task != "classification":
        return [np.arange(len(targets))]
    return [np.flatnonzero(targets == c) for c in classes_present(targets)]


def class_weights(setting, labels: np.ndarray, c: int) -> np.ndarray | None:
    """Per-class loss weights of TrainConfig.class_weights: None ('none'), scikit-learn's 'balanced' on the
    training labels, or the given list (checked: one entry per class)."""
    if setting == "none":
        return None
    w = balanced_weights(labels, c) if setting == "balanced" else np.asarray(setting, np.float32)
    if len(w) != c:
        raise ValueError(f"`class_weights` should have {c} entries (one per class), found {len(w)}")
    return w


def balanced_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """w_c = N / (C * n_c) (scikit-learn's 'balanced'); classes absent from `labels` get weight 0."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    w = np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 0.0)
    return w.astype(np.float32)
