"""Tap scaling: the taps as cached ("none"), or each feature standardised over the fine-tune samples
("standard"). One definition for cross-validation (crossval.py) and the refit (runtime/features.py); a model
trained on standardised taps is saved acting on raw ones (lora.fold_standardizer), so a served adapter reads
the taps as the backbone gives them.
"""
from __future__ import annotations

import numpy as np

SCALINGS = ("none", "standard")


def standardizer(features, n: int, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(mean, 1/std) per tap feature over all n samples (no labels used), summed in float64 over chunks of
    rows (features(idx) -> (y0, taps)), so no float64 copy of the taps is made; constant features get 1/std = 0."""
    parts = range(0, n, chunk)
    mu = sum(features(np.arange(a, min(n, a + chunk)))[1].sum(axis=0, dtype=np.float64) for a in parts) / n
    sd = np.sqrt(sum(((features(np.arange(a, min(n, a + chunk)))[1] - mu) ** 2).sum(axis=0) for a in parts) / n)
    inv = np.where(sd > 1e-6 * (np.abs(mu) + 1.0), 1.0 / np.maximum(sd, 1e-30), 0.0)
    return mu.astype(np.float32), inv.astype(np.float32)


def scaled(t: np.ndarray, scaling: str, standard: tuple[np.ndarray, np.ndarray],
           out: np.ndarray | None = None) -> np.ndarray:
    """The taps t (N, D) under `scaling`: t itself ("none"), or (t - mean) * (1/std) with standard = (mean, 1/std)
    ("standard"), written into `out` when given."""
    if scaling == "none":
        if out is None:
            return t
        out[...] = t
        return out
    if scaling != "standard":
        raise ValueError(f"`tap_scaling` should be one of {SCALINGS}, found {scaling!r}")
    out = np.subtract(t, standard[0], out=out)
    out *= standard[1]
    return out
