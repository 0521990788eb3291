"""Personalisation over time: new labelled samples -> candidate adapter -> gate -> publish or keep back.

Each call is a *session*. Its new samples join the adapter's accumulated samples (kept in the store,
`adapters/NAME/data/`); only samples never seen before go through the backbone (the store's Skip-Cache
keeps the rest). A candidate is trained on all accumulated training samples, warm-started from the
current version, and published only if the gate passes; either way it is kept as a version.

Holdout: of each session's new samples, the most recent `holdout_fraction` of each class (in the order
given, which should be time order) is set aside and never trained on. Holdouts accumulate.
The gate, against the current version (before the first one: the shared model without adapter):
1. Holdout: on the *verified* holdout - the holdout samples of earlier joined sessions - the candidate
   may be worse by at most `margin`. This session's own holdout is left out because its labels are what
   is in question (wrong labels would vouch for themselves); it counts only while the verified holdout
   is smaller than `min_holdout`.
2. Labels: a session whose labels the current version finds implausible (probability < `implausible_p`)
   for more than `max_implausible` of its samples is rejected. Only a personalised version is asked:
   the shared model is wrong by design on the data personalisation is for.
A rejected session is quarantined: its samples stay on disk but are left out of later training and
holdouts (the same inputs sent again, e.g. with corrected labels, count as new). Too little data (one
class, a training split smaller than a batch, a small holdout) defers: the samples join, nothing is trained.
Classes absent from the training samples keep the shared model's outputs (`mask_unseen_classes`).

Crash safety: the candidate version is written (atomic rename), then the accumulated data (atomic
folder swap), then `current` is switched (atomic replace). Stopped anywhere, the current version keeps
serving; the worst case is a candidate that was judged but not published, whose samples still count.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Callable, Literal

import numpy as np

from ..core import lora
from ..files.data import as_inputs, as_targets, num_samples
from ..files.fileio import remove_stale
from ..files.schema import check, normalize, to_dict
from ..runtime.backbone import Backbone
from ..runtime.cache import SkipCache, sample_keys
from ..runtime.features import FeatureSource
from ..runtime.train import finetune_features
from ..runtime.train_config import TrainConfig, holdout_mask, split_or_reason
from .gate import defer_reason, judge
from .samples import Samples
from .session_recipe import session_training
from .store import AdapterStore, check_name

Decision = Literal["published", "rejected", "deferred", "unchanged"]
JOINED = ("published", "deferred")   # sessions whose samples are trained on and held out


# a session warm-starts from the current version on raw taps; its own holdout (not cross-validation) picks the
# epoch, as measured on har (device_bench/personalize_har.py); `recipe` "chosen" replaces the weight decay and
# epochs by the device's choice
SESSION_TRAINING = TrainConfig(epochs=30, val_fraction=0.2, weight_decay=1.0, form="skip", tap_scaling="none")


@dataclass(frozen=True)
class PersonalizeConfig:
    """How a session is trained and judged."""
    train: TrainConfig = field(default_factory=lambda: SESSION_TRAINING)  # rank/alpha come from the current version
    recipe: Literal["chosen", "fixed"] = "chosen"  # chosen: the recipe chosen on this device (the current version's
                                             # record, else cross-validation: session_recipe.py), on `train`'s
                                             # other settings; fixed: `train` exactly
    holdout_fraction: float = 0.2            # most recent fraction of each class of each session, never trained on
    min_holdout: int = 10                    # fewer accumulated holdout samples than this: defer, publish nothing
    margin: float = 0.02                     # publish unless the candidate is worse than the current by more than this
    gate_metric: Literal["auto", "accuracy", "loss"] = "auto"  # auto: accuracy (classification), loss (regression)
    cache_dtype: Literal["float32", "float16"] = "float32"
    keep_versions: int = 10                  # prune older versions beyond this many (current, parent, pinned stay)
    max_implausible: float | None = 0.5      # reject a session if the current version finds more than this
                                             # fraction of its labels implausible; None: no label check
    implausible_p: float = 1e-3              # a label the current version gives less probability than this is implausible
    mask_unseen_classes: bool = True         # zero the adapter's outputs for classes absent from the training data
    lock_timeout: float = 600.0              # seconds to wait for another writer of the store

    def __post_init__(self):
        normalize(self)
        check(0 < self.holdout_fraction < 1, f"`holdout_fraction` should be in (0, 1), found {self.holdout_fraction}")
        check(self.min_holdout >= 1, f"`min_holdout` should be a positive integer, found {self.min_holdout}")
        check(self.margin >= 0, f"`margin` should be >= 0, found {self.margin}")
        check(self.gate_metric in ("auto", "accuracy", "loss"), f"`gate_metric` should be 'auto', 'accuracy' or "
                                                                f"'loss', found {self.gate_metric!r}")
        check(self.max_implausible is None or 0 <= self.max_implausible <= 1,
              f"`max_implausible` should be a fraction in [0, 1] or None, found {self.max_implausible}")
        check(0 < self.implausible_p < 1, f"`implausible_p` should be in (0, 1), found {self.implausible_p}")
        check(self.keep_versions >= 1, f"`keep_versions` should be a positive integer, found {self.keep_versions}")


@dataclass
class PersonalizeResult:
    """What a session did and why."""
    name: str
    decision: Decision
    reason: str
    session: int | None = None              # session number in the adapter's data (None: nothing new)
    version: int | None = None              # the candidate written (published or rejected), None if none
    current: int | None = None              # the version serving after this call
    previous: int | None = None             # the version serving before it
    samples: dict = field(default_factory=dict)   # new, duplicates, train, holdout, backbone_runs
    metrics: dict = field(default_factory=dict)   # reference / candidate metrics on the gate holdout
    seconds: dict = field(default_factory=dict)   # cache, train, total

    def to_dict(self) -> dict:
        return to_dict(self)


def personalize(store: AdapterStore, name: str, backbone: Backbone, x_new, y_new,
                config: PersonalizeConfig = PersonalizeConfig(), *,
                progress: Callable[[str], None] | None = None) -> PersonalizeResult:
    """Add a session of labelled samples to adapter `name`; publish the new version if the gate passes.

    `progress(stage)` is called after each stage: validated, trained, version_written, data_written, published.
    """
    start = time.perf_counter()
    step = progress or (lambda stage: None)
    check_name(name)
    m = backbone.manifest
    if config.gate_metric == "accuracy" and m.task != "classification":  # before any work, not after training
        raise ValueError("`gate_metric` 'accuracy' does not apply to a regression backbone; use 'loss' or 'auto'")
    inputs = as_inputs(x_new, m, "x_new")
    targets = as_targets(y_new, m, num_samples(inputs), "y_new")
    step("validated")
    with store.lock(config.lock_timeout):
        result = _session(store, name, backbone, inputs, targets, config, step)
    result.seconds["total"] = time.perf_counter() - start
    return result


def _session(store: AdapterStore, name: str, backbone: Backbone, inputs: dict, targets: np.ndarray,
             config: PersonalizeConfig, step: Callable[[str], None]) -> PersonalizeResult:
    """One session, under the store's lock: the new samples join the adapter's data; a candidate is trained
    and judged (unless there is too little data yet) and written as a version; then the data; then publish."""
    m = backbone.manifest
    folder = store.adapter_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale(folder)  # what writers killed mid-session left (temps of data, current.json)
    data = Samples.load(store.adapter_dir(name, "data"), m)
    cur = store.current(name)
    current = store.load(name, cur, m) if cur is not None else None
    keys = sample_keys(inputs)
    fresh = _unseen(keys, {bytes(k) for k in data.keys[data.joined(JOINED)]})
    counts = {"new": int(fresh.sum()), "duplicates": int(len(keys) - fresh.sum())}
    result = PersonalizeResult(name, "unchanged", "", current=cur, previous=cur, samples=counts)
    if not fresh.any():
        result.reason = f"all {len(keys)} samples are already in the adapter's data; nothing to train"
        return result
    session = result.session = data.next_session()
    hold_new = holdout_mask(targets[fresh], config.holdout_fraction, m.task)
    data = data.append({k: v[fresh] for k, v in inputs.items()}, targets[fresh],
                       [k for k, f in zip(keys, fresh) if f], session, hold_new)
    masks = _in_play(data, session, config)
    counts.update(train=int(masks["train"].sum()), holdout_verified=int(masks["verified"].sum()),
                  holdout_new=int(masks["new"].sum()))
    cache = SkipCache(backbone, store.cache_dir, dtype=config.cache_dtype)
    misses = cache.misses
    # the samples in play, read from the cache by their stored keys (no sample checked or hashed again):
    # the only backbone work is this session's new samples, in one pass
    use = masks["use"]
    features = FeatureSource.from_cache(cache, data.inputs_at(use), keys=[bytes(k) for k in data.keys[use]])
    _candidate(store, backbone, features, data, masks, current, config, result, step)
    counts["backbone_runs"] = cache.misses - misses
    data.save(store.adapter_dir(name, "data"), {
        "session": session, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "new": counts["new"],
        "duplicates": counts["duplicates"], "holdout": counts["holdout_new"], "decision": result.decision,
        "version": result.version, "reason": result.reason})
    step("data_written")
    if result.decision == "published":
        store.set_current(name, result.version)
        result.current = result.version
        step("published")
        store.prune(name, config.keep_versions)
    return result


def _in_play(data: Samples, session: int, config: PersonalizeConfig) -> dict[str, np.ndarray]:
    """Masks over the adapter's samples: in play this session (`use`: joined sessions and this one), this
    session's (`mine`), trained on (`train`), and the holdout parts: `verified` (earlier joined sessions'),
    `new` (this session's) and `gate` (what the gate scores: verified alone once it has `min_holdout`)."""
    use, mine = data.joined(JOINED + ("pending",), pending=session), data.session == session
    masks = {"use": use, "mine": mine, "train": use & ~data.holdout,
             "verified": use & data.holdout & ~mine, "new": use & data.holdout & mine}
    masks["gate"] = masks["verified"] if _verified_only(masks, config) else masks["verified"] | masks["new"]
    return masks


def _verified_only(masks: dict[str, np.ndarray], config: PersonalizeConfig) -> bool:
    return bool(masks["verified"].sum() >= config.min_holdout)


def _candidate(store: AdapterStore, backbone: Backbone, features: FeatureSource, data: Samples,
               masks: dict[str, np.ndarray], current, config: PersonalizeConfig, result: PersonalizeResult,
               step: Callable[[str], None]) -> None:
    """Train a candidate on the training samples (the recipe: session_recipe.py), judge it and write it as a
    version (result: decision, reason, metrics, version); or defer when there is too little data yet."""
    train, cur = masks["train"], result.previous
    at = np.cumsum(masks["use"]) - 1   # the position in `features` of each sample in play
    settings, source = session_training(config.train, current) if config.recipe == "chosen" else \
        (replace(config.train, recalibrate="none"), "fixed")
    split, why = split_or_reason(backbone.manifest, data.y[train], settings)
    result.decision = "deferred"
    result.reason = defer_reason(why, int(masks["gate"].sum()), config)
    if result.reason is not None:
        return
    # the judge scores candidates on these (lab backbone) rows: no re-calibrated candidate here; versions
    # warm-start skip adapters: no deep tier either
    candidate, history = finetune_features(features.subset(at[train]), data.y[train], split, settings,
                                           init=current, deep_tier=False)
    if config.mask_unseen_classes and backbone.manifest.task == "classification":
        _mask_unseen_classes(candidate, data.y[train])
    result.seconds = {"cache": history.cache_seconds, "train": history.train_seconds}
    step("trained")
    ok, result.reason, result.metrics = judge(
        backbone, features, data.y[masks["use"]], holdouts={p: at[masks[p]] for p in ("verified", "new", "gate")},
        mine=at[masks["mine"]], current=current, candidate=candidate, cur=cur,
        verified_only=_verified_only(masks, config), config=config)
    result.decision = "published" if ok else "rejected"
    info = store.add_version(result.name, candidate, parent=cur, samples=int(train.sum()),
                             status="accepted" if ok else "rejected", reason=result.reason, metrics=result.metrics,
                             extra={"session": result.session, "chosen": history.chosen, "recipe": source,
                                    "best_epoch": history.best_epoch, "stopped": history.stopped})
    result.version = info.version
    step("version_written")


def _unseen(keys: list[bytes], known: set[bytes]) -> np.ndarray:
    """Mask of samples whose key is neither in `known` nor earlier in `keys`."""
    fresh = np.zeros(len(keys), bool)
    for i, k in enumerate(keys):
        if k not in known:
            fresh[i] = True
            known.add(k)
    return fresh


def _mask_unseen_classes(adapter, y_train: np.ndarray) -> None:
    """Zero the adapter's B columns and bias of classes absent from y_train: those logits stay the shared
    model's. Without this, a session of 2 activities teaches the adapter to push the other 4 down."""
    unseen = np.setdiff1d(np.arange(adapter.config.num_outputs), np.unique(y_train))
    lora.mask_classes(adapter.params, adapter.config.layout, unseen)
