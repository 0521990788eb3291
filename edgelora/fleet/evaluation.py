"""The devices' evaluation replies: checked as train replies are, and combined so that no device chooses.

With `evaluate`, each device reports the shared adapter's metrics on its own validation split and the
server keeps the round with the lowest loss. A reply whose count is not an integer in [1, max-samples],
whose loss is not a finite non-negative number (cross-entropy and squared error are >= 0), whose other
metrics are not finite, or whose loss exceeds LOSS_LIMIT x the round's median loss is refused. The round's
loss is then the mean of the devices' losses weighted by their counts, as before, with each count capped
at the round's median x sample-cap. Why not tighter: honest losses are heavy-tailed (har, 30 devices:
median 0.02, largest 1.5, 75 x the median: users the backbone never saw), so clipping losses at 10 x the
median, or choosing by the median loss, both changed which round an honest har fleet keeps and cost it
2 points (docs/security.md). What remains: a device can pull the mean by at most its capped share of
LOSS_LIMIT x the median (it is reported: `loss-median` beside `loss`). Nothing here imports flwr.
"""
from __future__ import annotations

import math

import numpy as np

from .robust import cap_samples

NUM_EXAMPLES = "num-examples"
LOSS_MEDIAN = "loss-median"   # reported beside the bounded mean `loss`, which chooses the kept round
LOSS_LIMIT = 1000.0           # a loss above this many times the round's median loss is refused


def check_metrics(metrics, meta, server_round: int, max_samples: int) -> str | None:
    """Why an evaluation reply must be ignored, or None."""
    if metrics is None:
        return "no `metrics` record"
    if meta is None or meta.get("round") != server_round:
        return f"evaluation for round {None if meta is None else meta.get('round')!r} (expected {server_round}): stale"
    n = metrics.get(NUM_EXAMPLES)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= max_samples:
        return f"num-examples {n!r} (expected an integer in [1, {max_samples}])"
    loss = metrics.get("loss")
    if not isinstance(loss, (int, float)) or not math.isfinite(loss) or loss < 0:
        return f"loss {loss!r} (expected a finite number >= 0)"
    bad = sorted(k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v))
    return f"non-finite metrics {bad}" if bad else None


def mean_metrics(records: list, weights: list[float]) -> dict:
    """Weighted mean of the numeric metrics every record has; `num-examples` is the sum of the counts."""
    if not records:
        return {}
    keys = set.intersection(*(set(r.keys()) for r in records)) - {NUM_EXAMPLES}
    total = float(sum(weights))
    out = {k: sum(w * float(r[k]) for r, w in zip(records, weights)) / total for k in sorted(keys)
           if all(isinstance(r[k], (int, float)) for r in records)}
    out[NUM_EXAMPLES] = int(sum(r.get(NUM_EXAMPLES, 0) for r in records))
    return out


def out_of_bounds(records: list) -> list[str | None]:
    """For each checked record, why its loss is out of the round's bounds (> LOSS_LIMIT x median), or None."""
    median = float(np.median([float(r["loss"]) for r in records]))
    limit = LOSS_LIMIT * median
    return [f"loss {float(r['loss']):.4g} (expected <= {LOSS_LIMIT:g} x the round's median {median:.4g})"
            if float(r["loss"]) > limit else None for r in records]


def robust_metrics(records: list, sample_cap: float) -> dict:
    """Checked, in-bounds evaluation records combined: means weighted by capped counts, and the median loss."""
    weights = cap_samples([int(r[NUM_EXAMPLES]) for r in records], sample_cap)
    out = mean_metrics(records, weights)
    out[LOSS_MEDIAN] = float(np.median([float(r["loss"]) for r in records]))
    return out
