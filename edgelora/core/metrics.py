"""Evaluation metrics: accuracy, macro-F1 and cross-entropy; MSE and MAE for regression."""
from __future__ import annotations

import numpy as np

from .losses import log_softmax


def accuracy(labels: np.ndarray, pred: np.ndarray) -> float:
    return float((labels == pred).mean())


def macro_f1(labels: np.ndarray, pred: np.ndarray, num_classes: int) -> float:
    """Unweighted mean of per-class F1 over classes present in labels or predictions."""
    f1 = []
    for c in range(num_classes):
        tp = int(((pred == c) & (labels == c)).sum())
        fp = int(((pred == c) & (labels != c)).sum())
        fn = int(((pred != c) & (labels == c)).sum())
        if tp + fp + fn:
            f1.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1)) if f1 else 0.0


def evaluate_outputs(y: np.ndarray, target: np.ndarray, task: str) -> dict[str, float]:
    """Metrics of model outputs y (N, C) against targets (labels or values)."""
    if task == "classification":
        pred = y.argmax(axis=1)
        loss = -log_softmax(y.astype(np.float64))[np.arange(len(y)), target].mean()
        return {"accuracy": accuracy(target, pred), "macro_f1": macro_f1(target, pred, y.shape[1]),
                "loss": float(loss), "samples": int(len(y))}
    d = y.astype(np.float64) - target
    return {"mse": float((d * d).mean()), "mae": float(np.abs(d).mean()), "loss": float((d * d).mean()),
            "samples": int(len(y))}


def epoch_metrics(y: np.ndarray, target: np.ndarray, task: str) -> dict[str, float]:
    """The cheap per-epoch subset: loss and accuracy (classification) or loss and MAE (regression)."""
    if task == "classification":
        loss = -log_softmax(y)[np.arange(len(y)), target].mean()
        return {"loss": float(loss), "accuracy": float((y.argmax(axis=1) == target).mean())}
    d = y - target
    return {"loss": float((d * d).mean()), "mae": float(np.abs(d).mean())}
