"""The training budget: a floor in optimiser steps, explicit epochs kept, and when cross-validation extends it."""
import numpy as np

from edgelora.core.budget import budget_epochs, extend
from edgelora.core.selection import improved


def test_floor_in_steps_does_not_shrink_with_the_data():
    assert budget_epochs("auto", 300, 20, 20) == 300           # 1 step an epoch: 300 epochs, not 30
    assert budget_epochs("auto", 300, 100, 20) == 60
    assert budget_epochs("auto", 300, 2000, 20) == 30          # enough steps: the old 30 epochs
    assert budget_epochs(30, 300, 20, 20) == 30                # an explicit count is kept


def test_extends_while_the_largest_count_improves_within_the_time_budget():
    assert extend(True, 300, 300, 0.1, 0.001, 10.0) == (600, "extended")
    assert extend(True, 300, 300, 9.9, 0.001, 10.0) == (None, "time")       # 300 more epochs would pass 10 s
    assert extend(True, 2400, 300, 0.1, 0.001, 10.0) == (None, "cap")
    assert extend(False, 300, 300, 0.1, 0.001, 10.0) == (None, "score")


def scored(correct, loss=0.5):
    s = np.asarray(correct, float)[None]
    return {"score": s, "loss": np.full_like(s, loss)}


def test_only_an_improvement_beyond_noise_extends():
    base = np.r_[np.ones(14), np.zeros(6)]
    better = base.copy()
    better[14:18] = 1                                          # 4 more right, none lost
    assert improved([scored(better)], [scored(base)])
    swapped = base.copy()
    swapped[[0, 14]] = 0, 1                                    # one gained, one lost: noise
    assert not improved([scored(swapped)], [scored(base)])
    one = base.copy()
    one[14] = 1                                                # a single sample: within one paired SE
    assert not improved([scored(one)], [scored(base)])
    assert not improved([scored(base, 0.3)], [scored(base, 0.5)])   # a lower loss alone is not more right
