"""The demo's data: scikit-learn's bundled handwritten digits, and the new scanner that shifts them.

The digits are the UCI "Optical Recognition of Handwritten Digits" test set as shipped inside
scikit-learn (1,797 8x8 images with pixel counts 0..16, 13 writers; E. Alpaydin and C. Kaynak, 1998;
UCI Machine Learning Repository, CC BY 4.0). edgelora ships none of it: it is read from the installed
scikit-learn (the `demo` extra). The pre-trained demo backbone (edgelora/data/demo_bundle, made by
edgelora/cli/make_demo.py) learnt from the first LAB_SAMPLES images; the rest play the device's life.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

LAB_SAMPLES = 1000        # images 0..999: the lab pre-trains the backbone on them (clean scans)
FINETUNE_SAMPLES = 400    # images 1000..1399: labelled scans the device collects after the shift
CITATION = ("UCI Optical Recognition of Handwritten Digits (E. Alpaydin, C. Kaynak, 1998; CC BY 4.0), "
            "as bundled with scikit-learn")
SHIFT = "new scanner: image 1 pixel to the right, 60 % contrast, grey background (+2 of 16), noise 0.5"


class MissingDependency(Exception):
    """Something the demo needs is not installed; the message says how to install it."""


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """(x (1797, 64) float32 pixel counts 0..16, y (1797,) int64 digits) from scikit-learn's copy.

    Reads the CSV file scikit-learn ships instead of importing sklearn.datasets, which would pull in
    scipy and blur the demo's memory figure; falls back to sklearn's loader if the file moved.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise MissingDependency("the demo reads scikit-learn's bundled digits, and scikit-learn is not installed; "
                                "install it from the edgelora clone with: pip install -e '.[demo]'  (or: pip install "
                                "scikit-learn)")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    if path.is_file():
        table = np.loadtxt(path, delimiter=",", dtype=np.float32)
        x, y = table[:, :-1], table[:, -1].astype(np.int64)
    else:  # pragma: no cover - a future scikit-learn layout
        from sklearn.datasets import load_digits as sk_load
        bunch = sk_load()
        x, y = bunch.data.astype(np.float32), bunch.target.astype(np.int64)
    if x.shape != (1797, 64):
        raise MissingDependency(f"scikit-learn's digits should be 1797 images of 8x8, found {x.shape}")
    return np.ascontiguousarray(x), y


def new_scanner(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """What a second scanner makes of the same digits (SHIFT): misregistered, faint, grey and noisy."""
    img = x.reshape(-1, 8, 8).astype(np.float32)
    img = np.concatenate([np.zeros_like(img[:, :, :1]), img[:, :, :-1]], axis=2)  # 1 pixel right
    img = 0.6 * img + 2.0                                                          # contrast, background
    img = img + np.random.default_rng(seed).normal(0.0, 0.5, img.shape).astype(np.float32)
    return np.clip(img, 0.0, 16.0).reshape(len(x), 64).astype(np.float32)


def splits(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """lab_train (clean), finetune (new scanner, labelled), test (new scanner), lab_test (same images, clean)."""
    x, y = load_digits()
    a, b = LAB_SAMPLES, LAB_SAMPLES + FINETUNE_SAMPLES
    shifted = new_scanner(x[a:], seed)
    return {"lab_train": (x[:a], y[:a]), "finetune": (shifted[:b - a], y[a:b]), "test": (shifted[b - a:], y[b:]),
            "lab_test": (x[b:], y[b:])}
