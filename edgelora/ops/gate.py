"""The gate of a personalisation session (personalize.py): is the candidate no worse than the version
serving on the verified holdout, and are the session's labels plausible to it? Also: when there is too
little data to judge yet."""
from __future__ import annotations

from typing import Protocol

import numpy as np

from ..core.losses import log_softmax
from ..core.metrics import evaluate_outputs
from ..runtime.backbone import Backbone
from ..runtime.features import FeatureSource
from ..runtime.predict import Predictor


class GateSettings(Protocol):
    """The gate's settings (personalize.PersonalizeConfig has them)."""
    min_holdout: int
    margin: float
    gate_metric: str
    max_implausible: float | None
    implausible_p: float


def judge(backbone: Backbone, features: FeatureSource, y: np.ndarray, *, holdouts: dict[str, np.ndarray],
          mine: np.ndarray, current, candidate, cur: int | None, verified_only: bool,
          config: GateSettings) -> tuple[bool, str, dict]:
    """(publish?, reason, metrics): the label check, then the holdout comparison. features and their labels y:
    the samples in play; holdouts (each part) and mine (this session's samples): positions in them."""
    ref_name = f"v{cur}" if cur is not None else "the shared model"
    metrics = _evaluate(backbone, features, y, holdouts, {"reference": current, "candidate": candidate})
    metrics.update(reference_version=cur, gate_holdout="verified" if verified_only else "verified+new")
    ok, why = _gate(metrics, config, ref_name)
    if not verified_only:
        why += (f" (earlier sessions' holdout has {len(holdouts['verified'])} < min_holdout {config.min_holdout} "
                f"samples, so this session's own holdout counts too)")
    if current is not None and config.max_implausible is not None and backbone.manifest.task == "classification":
        y0, t = features(mine)
        logp = log_softmax(Predictor(backbone, current).apply(y0, t).astype(np.float64))
        frac = float((logp[np.arange(len(logp)), y[mine]] < np.log(config.implausible_p)).mean())
        metrics["implausible_labels"] = frac
        if frac > config.max_implausible:
            ok, why = False, (f"rejected: {100 * frac:.0f} % of this session's labels are implausible for {ref_name} "
                              f"(probability < {config.implausible_p:g}), more than max_implausible "
                              f"{100 * config.max_implausible:g} %: wrong labels? {ref_name} keeps serving")
    return ok, why, metrics


def defer_reason(why: str, n_hold: int, config: GateSettings) -> str | None:
    """Why there is too little data to train and judge a candidate yet (`why` the training samples cannot
    train: train_config.split_or_reason), or None."""
    if why:
        return f"deferred: {why} - the samples are kept and count next time"
    if n_hold < config.min_holdout:
        return (f"deferred: the holdout has {n_hold} samples, fewer than min_holdout {config.min_holdout}, too "
                f"few to judge a new version - the samples are kept and count next time")
    return None


def _evaluate(backbone: Backbone, features: FeatureSource, y: np.ndarray, parts: dict[str, np.ndarray],
              models: dict) -> dict:
    """{model: {part: metrics}} for each non-empty holdout part (positions in features), from cached rows."""
    out = {name: {} for name in models}
    for part, idx in parts.items():
        if not len(idx):
            continue
        y0, t = features(idx)
        for name, adapter in models.items():
            out[name][part] = evaluate_outputs(Predictor(backbone, adapter).apply(y0, t), y[idx],
                                               backbone.manifest.task)
    return out


def _gate(metrics: dict, config: GateSettings, ref_name: str) -> tuple[bool, str]:
    """(publish?, reason): on the gate holdout the candidate may be worse than the reference by at most `margin`."""
    key = config.gate_metric if config.gate_metric != "auto" else \
        ("accuracy" if "accuracy" in metrics["candidate"]["gate"] else "loss")
    if key not in metrics["candidate"]["gate"]:
        raise ValueError(f"`gate_metric` {key!r} does not apply to a regression backbone; use 'loss' or 'auto'")
    c, r = metrics["candidate"]["gate"][key], metrics["reference"]["gate"][key]
    n = metrics["candidate"]["gate"]["samples"]
    worse = (r - c) if key == "accuracy" else (c - r)
    fmt = (lambda v: f"{100 * v:.1f} %") if key == "accuracy" else (lambda v: f"{v:.4f}")
    unit, size = (" points", 100) if key == "accuracy" else ("", 1)
    what = f"holdout {key} {fmt(c)} vs {fmt(r)} for {ref_name} on {n} samples"
    if worse > config.margin + 1e-12:
        return False, (f"rejected: {what}: worse by {size * worse:.1f}{unit}, more than the margin "
                       f"{size * config.margin:g}{unit}; {ref_name} keeps serving")
    return True, f"published: {what} (margin {size * config.margin:g}{unit})"
