"""Choosing among cross-validated candidates, "no fine-tuning" (the identity adapter) among them: the folds
and their repeats, each candidate's summary, the choice rule and how sure the estimate is.

A candidate is anything scored per sample by a model that never trained on that sample: a recipe of
crossval.py, or the backbone alone. Scores are per (repeat, sample), so every rule here is paired: two
candidates are compared on the same samples, not through their folds' spreads, which at 4 samples a fold
move in 25-point steps and swamp any real difference.
"""
from __future__ import annotations

import math

import numpy as np

from .losses import class_groups

IDENTITY = "identity"   # the form of the "no fine-tuning" candidate
MIN_SCORES = 100        # repeat the folds until every candidate has about this many held-out scores
MAX_REPEATS = 4


def fold_count(requested: int, n: int) -> int:
    """k of a k-fold cross-validation of n samples: `requested`, at most n // 2 (each fold holds >= 2 samples)."""
    return min(requested, n // 2)


def repeats_for(n: int, requested: int) -> int:
    """Fold repeats for n samples: `requested` if > 0, else ("auto") enough for MIN_SCORES held-out scores,
    1 to MAX_REPEATS (1 from 100 samples on, so larger sets cost what they did)."""
    return requested if requested > 0 else max(1, min(MAX_REPEATS, math.ceil(MIN_SCORES / max(n, 1))))


def folds(targets: np.ndarray, k: int, task: str, repeat: int = 0, repeats: int = 1) -> np.ndarray:
    """Fold id (0..k-1) per sample: each class's samples, in sample order, cut into k contiguous blocks.
    Repeat r > 0 moves the cut points by r/repeats of a block and gives class c's blocks the fold ids
    rotated by r c, so samples of different classes are held out in other company (at one sample per class
    and fold, the only thing a repeat can change)."""
    fold = np.zeros(len(targets), np.int64)
    for c, g in enumerate(class_groups(targets, task)):
        start = repeat * len(g) // (k * repeats)
        fold[g] = ((np.arange(len(g)) + start) * k // len(g) + repeat * c) % k
    return fold


def held_out(targets: np.ndarray, k: int, task: str, repeats: int) -> np.ndarray:
    """(repeats k, N) bool: row r k + f holds out fold f of repeat r; each column has `repeats` Trues."""
    rows = [folds(targets, k, task, r, repeats) == f for r in range(repeats) for f in range(k)]
    return np.stack(rows)


def interval(per_sample: np.ndarray, classification: bool) -> tuple[float, float]:
    """A 95 % interval of the mean of per-sample scores over N distinct samples (repeats are not new
    samples): Wilson's for an accuracy, the normal one for minus squared errors."""
    n, p = len(per_sample), float(per_sample.mean())
    if classification:
        z2 = 1.96 ** 2
        mid, half = (p + z2 / (2 * n)) / (1 + z2 / n), 1.96 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
        return max(0.0, mid - half), min(1.0, mid + half)
    half = 1.96 * float(per_sample.std(ddof=1)) / math.sqrt(n) if n > 1 else math.inf
    return p - half, p + half


def summarize(score: np.ndarray, loss: np.ndarray, held: np.ndarray, classification: bool = True) -> dict:
    """Mean, per-fold means and their spread, and a 95 % interval of a (repeats, N) per-sample score and
    loss; `held` as held_out gives it."""
    repeats, n = score.shape
    k = len(held) // repeats
    per = [float(score[s // k][held[s]].mean()) for s in range(len(held)) if held[s].any()]
    finite = np.isfinite(score).all() and np.isfinite(loss).all()
    sample = score.mean(axis=0)
    return {"score": float(sample.mean()) if finite else -math.inf, "loss": float(loss.mean()) if finite else math.inf,
            "folds": per, "spread": float(np.std(per)) if finite else math.inf,
            "interval": list(interval(sample, classification)) if finite else [-math.inf, math.inf],
            "per_sample": sample}


def paired_se(a: np.ndarray, b: np.ndarray) -> float:
    """Standard error of mean(a - b) over paired per-sample scores."""
    d = a - b
    return float(d.std(ddof=1)) / math.sqrt(len(d)) if len(d) > 1 and np.isfinite(d).all() else math.inf


def improved(later: list[dict], earlier: list[dict]) -> bool:
    """Whether the best of `later` (rows with per-sample "score" and "loss", (R, N)) beats the best of
    `earlier` in score by more than one paired standard error. Noise, or a lower loss at the same accuracy
    (it keeps falling long after the predictions stop changing), does not extend a budget."""
    def best(rows):
        return max(rows, key=lambda r: (float(r["score"].mean()), -float(r["loss"].mean())))
    a, b = best(later), best(earlier)
    sa, sb = a["score"].mean(axis=0), b["score"].mean(axis=0)
    gain = float((sa - sb).mean())
    return gain > 0 and gain > paired_se(sa, sb) * (1 + 1e-9)   # one sample's gain equals its SE: not enough


def _key(row: dict) -> tuple[float, float]:
    return row["score"], -row["loss"]


def within(row: dict, top: dict) -> bool:
    """Whether `row` is within one paired standard error of `top` (a diverged row never is: its error is inf)."""
    se = paired_se(top["per_sample"], row["per_sample"])
    return math.isfinite(row["score"]) and row["score"] >= top["score"] - se


def rule_paired(table: list[dict]) -> dict:
    """Among the candidates within one *paired* standard error of the best, raw taps before standardised,
    then the higher score, then the lower loss (no preference between the forms: see the README)."""
    top = max(table, key=_key)
    ties = [row for row in table if row is top or within(row, top)]
    return max(ties, key=lambda row: (row["recipe"].tap_scaling == "none",) + _key(row))


def rule_best(table: list[dict]) -> dict:
    """The highest score, then the lowest loss."""
    return max(table, key=_key)


def rule_folds(table: list[dict]) -> dict:
    """The rule used until this module: within one standard error of the folds' spread of the best, the
    last-layer form first, then raw taps, then the higher score. Kept to measure against."""
    top = max(table, key=_key)
    band = top["score"] - top["spread"] / math.sqrt(len(top["folds"])) if math.isfinite(top["spread"]) else top["score"]
    ties = [row for row in table if row["score"] >= band]
    return max(ties, key=lambda row: (row["recipe"].form == "last", row["recipe"].tap_scaling == "none") + _key(row))


RULES = {"paired": rule_paired, "best": rule_best, "folds": rule_folds}


def choose(table: list[dict], baseline: dict | None, rule: str = "paired") -> tuple[dict, bool]:
    """(the adapter candidate the rule picks, whether "no fine-tuning" wins instead): the backbone alone
    (`baseline`, a summarize() row; None: not a candidate) wins when the picked adapter's estimate is no
    better: a lower score, or the same score and a higher loss."""
    best = RULES[rule](table)
    return best, baseline is not None and _key(baseline) >= _key(best)
