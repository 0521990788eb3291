"""Server-side optimiser over the round's mean update (numpy only; the mean itself: edgelora.fleet.robust).

FedAvg (McMahan et al., 2017) weighted by samples: the next shared adapter is the sample-weighted mean of
the devices' local adapters, i.e. shared + the weighted mean of their updates. Server-side momentum
(FedAvgM, Hsu et al., 2019, arXiv 1909.06335) keeps a velocity over those mean updates, which damps the
round-to-round swings non-IID devices cause: v = beta v + mean_update; shared += lr v.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..files.schema import check
from .robust import weighted_mean  # noqa: F401 - the plain weighted mean lives with the robust rules

STRATEGIES = ("fedavg", "fedavgm")


@dataclass
class ServerOptimizer:
    """Applies the round's mean update to the shared parameters: plain FedAvg or with server momentum."""
    strategy: Literal["fedavg", "fedavgm"] = "fedavg"
    momentum: float = 0.9              # fedavgm: beta
    lr: float = 1.0                    # server learning rate (1.0 with fedavg = the weighted mean of models)
    velocity: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self):
        check(self.strategy in STRATEGIES, f"strategy: expected one of {STRATEGIES}, found {self.strategy!r}")
        check(0 <= self.momentum < 1, f"`momentum` should be in [0, 1), found {self.momentum}")
        check(self.lr > 0, f"server `lr` should be positive, found {self.lr}")

    def step(self, shared: np.ndarray, mean_update: np.ndarray) -> np.ndarray:
        """The next shared parameters (float32)."""
        direction = mean_update
        if self.strategy == "fedavgm":
            self.velocity = mean_update if self.velocity is None else self.momentum * self.velocity + mean_update
            direction = self.velocity
        return (shared.astype(np.float64) + self.lr * direction).astype(np.float32)
