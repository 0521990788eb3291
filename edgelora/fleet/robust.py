"""Robust aggregation of checked device updates (numpy only): what one device, or a few, can move.

A check (edgelora.fleet.update) refuses what is malformed; what is well formed may still be hostile. So
before any rule averages updates, each device's weight and size are bounded by the round's own statistics:

    weight   a device's sample count is clipped to `sample_cap` x the round's median count, so claiming
             10^6 samples buys no more than `sample_cap` honest devices' worth;
    size     an update whose L2 norm exceeds `norm_clip` x the round's median norm is scaled down to it
             (norm-bounded aggregation, Sun et al. 2019, arXiv 1911.07963), so x50 or a norm-999 update
             moves the shared adapter no further than a few honest ones.

Then a rule combines them (RULES):

    mean      the weighted mean of the clipped updates (FedAvg over bounded updates)
    median    the coordinate-wise median, unweighted (Yin et al. 2018, arXiv 1803.01498)
    trimmed   the coordinate-wise mean after dropping the `trim` share of the largest and of the smallest
              values of each coordinate, unweighted (Yin et al. 2018)
    fedavg    the plain sample-weighted mean, no bounds (what the fleet did before: only for comparison)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..files.schema import check

RULES = ("mean", "median", "trimmed", "fedavg")


def cap_samples(samples: list[int], cap: float) -> list[float]:
    """Sample counts clipped to `cap` x their median (each device's weight bounded by the round's own)."""
    limit = cap * float(np.median(samples))
    return [float(min(n, limit)) for n in samples]


def clip_norms(updates: list[np.ndarray], clip: float) -> tuple[list[np.ndarray], list[float]]:
    """Updates scaled down to at most `clip` x the round's median L2 norm; returns (updates, their norms)."""
    norms = [float(np.linalg.norm(u.astype(np.float64))) for u in updates]
    limit = clip * float(np.median(norms))
    out = [u.astype(np.float64) * (limit / n if n > limit else 1.0) for u, n in zip(updates, norms)]
    return out, norms


def weighted_mean(updates: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """Weighted mean of flat updates (accumulated in float64)."""
    check(len(updates) == len(weights) and len(updates) >= 1, "weighted_mean needs one weight per update")
    total = float(sum(weights))
    out = np.zeros(updates[0].shape, np.float64)
    for u, w in zip(updates, weights):
        out += (w / total) * u.astype(np.float64)
    return out


def trimmed_mean(updates: list[np.ndarray], trim: float) -> np.ndarray:
    """Coordinate-wise mean without the floor(trim * n) largest and smallest values of each coordinate."""
    stacked = np.sort(np.stack([u.astype(np.float64) for u in updates]), axis=0)
    k = int(math.floor(trim * len(updates)))
    return stacked[k:len(updates) - k].mean(axis=0)


@dataclass(frozen=True)
class RobustRule:
    """How a round's checked updates become one mean update."""
    rule: str = "mean"          # one of RULES
    sample_cap: float = 3.0     # a device's weight is at most this many times the round's median sample count
    norm_clip: float = 3.0      # an update's norm is clipped to this many times the round's median norm
    trim: float = 0.2           # trimmed: share of values dropped at each end of every coordinate

    def __post_init__(self):
        check(self.rule in RULES, f"`aggregation` should be one of {RULES}, found {self.rule!r}")
        check(self.sample_cap >= 1, f"`sample-cap` should be >= 1 (x the median), found {self.sample_cap}")
        check(self.norm_clip >= 1, f"`norm-clip` should be >= 1 (x the median), found {self.norm_clip}")
        check(0 <= self.trim < 0.5, f"`trim` should be in [0, 0.5), found {self.trim}")

    def __call__(self, updates: list[np.ndarray], samples: list[int]) -> tuple[np.ndarray, dict]:
        """(mean update in float64, what was bounded: clipped norms, capped weights)."""
        if self.rule == "fedavg":
            return weighted_mean(updates, [float(n) for n in samples]), {}
        weights = cap_samples(samples, self.sample_cap)
        clipped, norms = clip_norms(updates, self.norm_clip)
        limit = self.norm_clip * float(np.median(norms))
        info = {"norm_median": float(np.median(norms)),
                "norms_clipped": int(sum(n > limit for n in norms)),
                "samples_capped": int(sum(w < n for w, n in zip(weights, samples)))}
        if self.rule == "median":
            return np.median(np.stack(clipped), axis=0), info
        if self.rule == "trimmed":
            return trimmed_mean(clipped, self.trim), info
        return weighted_mean(clipped, weights), info
