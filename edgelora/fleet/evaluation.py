"""The devices' evaluation replies: checked as train replies are, and combined so that no device chooses.

With `evaluate`, each device reports the shared adapter's metrics on its own validation split and the
server keeps the round with the lowest loss. A reply whose count is not an integer in [1, max-samples],
whose loss is not a finite non-negative number (cross-entropy and squared error are >= 0) or whose other
metrics are not finite is refused. The round's loss is then the mean of the devices' losses weighted by
their counts, as before, but with each count capped at the round's median x sample-cap and each loss at
the round's median loss x LOSS_CLIP: one device moves it by at most its capped share of that bound. On an
honest fleet neither bound binds (har: the kept round is the one the plain weighted mean keeps), while
the median, which no minority can move at all, keeps another round there and scores 2 points lower
(docs/security.md), so the median is reported (`loss-median`) but does not choose. Nothing here imports flwr.
"""
from __future__ import annotations

import math

import numpy as np

from .robust import cap_samples

NUM_EXAMPLES = "num-examples"
LOSS_MEDIAN = "loss-median"   # reported beside the bounded mean `loss`, which chooses the kept round
LOSS_CLIP = 10.0              # a device's loss counts at most this many times the round's median loss


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


def robust_metrics(records: list, sample_cap: float) -> dict:
    """Checked evaluation records combined: means weighted by capped counts, each loss clipped to
    LOSS_CLIP x the median loss; plus the median loss."""
    weights = cap_samples([int(r[NUM_EXAMPLES]) for r in records], sample_cap)
    median = float(np.median([float(r["loss"]) for r in records]))
    bounded = [{**dict(r), "loss": min(float(r["loss"]), LOSS_CLIP * median)} for r in records]
    out = mean_metrics(bounded, weights)
    out[LOSS_MEDIAN] = median
    return out
