"""Which tap statistics a fine-tune's adapter reads (files/tap_stats.py), chosen by the data.

A bundle offering statistics of its feature-map taps (the channel standard deviations, a small map kept
whole) fills the Skip-Cache with all of them in one forward per sample; each candidate is a view of those
rows (a column selection, no backbone run). With `tap_statistics` "auto" and cross-validation, each candidate
is cross-validated like any recipe and the best kept: "none" (the bundle's taps, as bundles without
statistics) and each offered statistic alone.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..files import tap_stats
from .features import FeatureSource
from .train_config import TrainConfig

NONE, ALL = "none", "all"


def fixed(features: FeatureSource, config: TrainConfig, init) -> FeatureSource:
    """The features over the view a fine-tune reads before anything is chosen: a warm start's own statistics;
    "none", one statistic or "all" as asked (one the bundle does not offer is refused); "auto": the bundle's
    taps only, which `choose` then compares with the others (the training kit, like its `form` and
    `tap_scaling`, narrows "auto" to that plain choice). A bundle offering none: the features as they are
    (asking it for one statistic is refused)."""
    if init is not None:
        return features.with_statistics(tuple(getattr(init.config, "tap_statistics", ())))
    asked = config.tap_statistics
    return features.with_statistics(None if asked == ALL else () if asked in (NONE, "auto") else (asked,))


def candidates(manifest) -> list[tuple[str, tuple[str, ...]]]:
    """(name, statistics) of each candidate view: "none" (the simplest) first, then each offered statistic
    alone; at most 1 + len(TAP_STATISTICS) cross-validations ("all" is asked for explicitly)."""
    return [(NONE, ())] + [(s, (s,)) for s in tap_stats.offered(manifest)]


def choose(features: FeatureSource, targets: np.ndarray, config: TrainConfig, init, picked,
           plan: Callable[[FeatureSource], object]) -> tuple[FeatureSource, object, dict]:
    """(features over the view that cross-validates best, its Plan (runtime/plan.py), what was compared), or the
    features and `picked` as given when there is nothing to choose. plan(features) cross-validates one view;
    `picked` is its result on the given features ("none"), when already known. Equal accuracies go to
    the lower cross-validated loss, then to the simpler view (fewer statistics)."""
    if init is not None or config.tap_statistics != "auto" or not config.cross_validates or \
            not tap_stats.offered(features.manifest) or config.form == "deep":
        return features, picked, {}
    best, scores, losses = None, {}, {}
    for name, statistics in candidates(features.manifest):
        f = features.with_statistics(statistics)
        result = picked if f is features and picked is not None else plan(f)
        scores[name], losses[name] = result.selection["chosen"]["score"], result.selection["chosen"]["loss"]
        if best is None or (scores[name], -losses[name]) > (scores[best[0]], -losses[best[0]]):
            best = (name, f, result)
    return best[1], best[2], {"chosen": best[0], "scores": scores, "losses": losses}
