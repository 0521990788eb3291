"""Re-estimating normalisation statistics on the device's own samples (AdaBN-style; labels not used).

Li et al., "Revisiting Batch Normalization For Practical Domain Adaptation" (AdaBN, 2016): a network whose
batch-norm layers use the target domain's statistics adapts to it without any training. Here, forward passes
only: the input standardisation becomes the samples' mean and standard deviation (same broadcast shape as the
lab's); each batch-norm layer, in call order, gets the mean and (biased) variance of its input computed with
the layers before it already re-estimated. That is what a PyTorch `model.train()` forward over all samples as
one batch normalises with, so the re-calibrated eval-mode backbone computes that forward's outputs.

`candidates` yields the backbones a fine-tune tries (files/recalibration.KINDS): the lab's ("none") first,
then those the bundle allows; each has its own identity, so each fills its own Skip-Cache.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from ..files import tap_stats
from ..files.bundle import Manifest, Standardize
from ..files.data import num_samples
from ..files.recalibration import KINDS, LayerStats, Recalibration, constant_shape
from .backbone import Backbone
from .cache import SkipCache
from .features import FeatureSource

STD_FLOOR = 1e-6          # a standard deviation below STD_FLOOR * (|mean| + 1) keeps the lab's (a constant feature)


def available(manifest: Manifest) -> list[str]:
    """The candidate kinds a bundle allows: "none", plus "input" (it standardises inputs), "bn" (it records
    batch-norm layers) and "both"."""
    have = {"input": bool(manifest.preprocess), "bn": bool(manifest.normalization)}
    return ["none"] + [k for k in ("input", "bn") if have[k]] + (["both"] if all(have.values()) else [])


def kinds(manifest: Manifest, asked: str) -> list[str]:
    """The candidates for the setting `asked` ("auto": every available kind; otherwise exactly that one)."""
    if asked == "auto":
        return available(manifest)
    if asked not in KINDS:
        raise ValueError(f"`recalibrate` should be 'auto' or one of {KINDS}, found {asked!r}")
    if asked not in available(manifest):
        need = {"input": "an input standardisation (`preprocess`)", "bn": "batch-norm layers (`normalization`)",
                "both": "both an input standardisation and batch-norm layers"}[asked]
        raise ValueError(f"`recalibrate` {asked!r} needs a bundle with {need}; this one allows {available(manifest)} "
                         f"(re-export the model with this edgelora to record batch-norm layers)")
    return [asked]


def estimate(backbone: Backbone, inputs: dict[str, np.ndarray], kind: str) -> Recalibration:
    """The statistics of `kind` re-estimated on `inputs` (checked samples: files/data.as_inputs), from the
    lab backbone `backbone`."""
    n = num_samples(inputs)
    if n < 2:
        raise ValueError(f"re-estimating normalisation statistics needs at least 2 samples, found {n}")
    m = backbone.lab_manifest
    pre = {name: input_stats(inputs[name], lab) for name, lab in m.preprocess.items()} if kind in ("input", "both") else {}
    rc = Recalibration(kind, n, pre)
    if kind in ("bn", "both"):
        for spec in m.normalization:        # in call order: each layer sees the earlier ones re-estimated
            m1, m2 = backbone.recalibrated(rc).moments(inputs, spec.name, validated=True)
            stats = LayerStats(m1.tolist(), np.maximum(m2 - m1 * m1, 0.0).tolist())
            rc = Recalibration(kind, n, pre, {**rc.normalization, spec.name: stats})
    return rc


def input_stats(x: np.ndarray, lab: Standardize) -> Standardize:
    """Mean and standard deviation of x (N, ...) over the samples and every axis the lab's constants broadcast
    over (a per-channel standardisation stays per channel). A (near) constant feature keeps the lab's std."""
    shape = constant_shape(lab)
    sample = x.shape[1:]
    full = (1,) * (len(sample) - len(shape)) + shape
    axes = (0,) + tuple(i + 1 for i, (d, s) in enumerate(zip(full, sample)) if d == 1 and s != 1)
    v = x.astype(np.float64)
    mean = v.mean(axis=axes, keepdims=True)
    std = np.sqrt(((v - mean) ** 2).mean(axis=axes, keepdims=True))
    mean, std = mean.reshape(shape), std.reshape(shape)
    std = np.where(std > STD_FLOOR * (np.abs(mean) + 1.0), std, np.broadcast_to(np.asarray(lab.std, np.float64), shape))
    return Standardize(mean.tolist() if shape else float(mean), std.tolist() if shape else float(std))


def candidates(backbone: Backbone, inputs: dict[str, np.ndarray], asked: str = "auto") -> Iterator[tuple[str, Backbone]]:
    """(kind, backbone) for each candidate, the lab backbone ("none") first; each estimated only when reached."""
    for kind in kinds(backbone.lab_manifest, asked):
        yield kind, backbone if kind == "none" else backbone.recalibrated(estimate(backbone, inputs, kind))


def feature_candidates(features: FeatureSource, asked: str = "auto") -> Iterator[tuple[str, FeatureSource]]:
    """(kind, the fine-tune samples' features over that candidate backbone) for each candidate of `asked`, the
    given `features` ("none") first. Each candidate fills a Skip-Cache of its own (like the given one: same
    folder, dtype and memory budget), or runs its backbone at every call when `features` has no cache."""
    base, read = features.backbone, tap_stats.chosen(features.manifest)   # each over the same tap statistics
    for kind, backbone in candidates(base, features.inputs, asked):
        if kind == "none":
            yield kind, features
        elif features.cache is None:
            yield kind, FeatureSource.from_backbone(backbone, features.inputs).with_statistics(read)
        else:
            c = features.cache
            cache = SkipCache(backbone, c.directory, c.dtype.name, c.memory_budget)
            yield kind, FeatureSource.from_cache(cache, features.inputs).with_statistics(read)
