"""The training budget: counted in optimiser steps, with a floor that does not shrink with the data, and
extended by cross-validation while its score still improves at the largest count, within a time budget.

A zero-initialised adapter needs a number of optimiser *steps*, not epochs: 20 samples x 30 epochs at batch
20 is 30 steps, too few to move it. So `epochs="auto"` trains at least `min_steps` steps (and at least
DEFAULT_EPOCHS epochs, the old default, so large sets train as before). An explicit epoch count is kept.
"""
from __future__ import annotations

import math

DEFAULT_EPOCHS = 30   # epochs of an "auto" budget when the data already gives enough steps
EXTEND_FACTOR = 2     # each extension doubles the largest epoch count
MAX_EXTENSION = 8     # and stops at this multiple of the starting budget


def budget_epochs(epochs, min_steps: int, n: int, batch_size: int) -> int:
    """The epochs to train n samples: `epochs` when it is a number, else ("auto") enough epochs for at
    least `min_steps` optimiser steps and at least DEFAULT_EPOCHS."""
    if epochs != "auto":
        return int(epochs)
    return max(DEFAULT_EPOCHS, math.ceil(min_steps / max(1, math.ceil(n / batch_size))))


def extend(improving: bool, last: int, start: int, seconds: float, per_epoch: float,
           limit: float) -> tuple[int | None, str]:
    """(the next epoch count to train to, or None; why the budget stopped or grew). improving: whether the
    best candidate at the largest count `last` beats the best at the smaller ones (selection.improved);
    start: the largest count of the starting budget; seconds: spent so far; per_epoch: seconds per epoch;
    limit: the time budget in seconds."""
    if not improving:
        return None, "score"                      # the largest count no longer improves: enough steps
    nxt = last * EXTEND_FACTOR
    if nxt > start * MAX_EXTENSION:
        return None, "cap"
    if seconds + per_epoch * (nxt - last) > limit:
        return None, "time"                       # it still improves, but the time budget stops it
    return nxt, "extended"
