"""What a fine-tune is asked to do (TrainConfig), what it did (History), which samples it trains and
validates on (the train/validation split, or why the samples cannot train yet). Shared by both trainers:
train.py (numpy) and onnx_trainer.py (the ONNX training kit)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..core.bookkeeping import index_dtype
from ..core.losses import class_groups, classes_present
from ..core.shape import AdapterShape, check_alpha, check_rank
from ..files.bundle import Manifest
from ..files.schema import check, normalize, to_dict


@dataclass(frozen=True)
class TrainConfig(AdapterShape):
    """Fine-tuning settings: the adapter's shape (r, lora_alpha, bias: core/shape.py) and how to train it.
    Defaults are the ones measured on the fan and har protocols (docs/results.md)."""
    r: int | Literal["auto"] = 4                     # adapter rank, or "auto": pick from rank_grid on validation loss
    epochs: int | Literal["auto"] = "auto"           # passes over the training split; "auto": a budget from the
                                                     # data (>= min_steps steps and >= 30 epochs), extended by
                                                     # cross-validation while it still improves (cv_seconds)
    min_steps: int = 300                             # "auto" epochs: train at least this many optimiser steps
    cv_seconds: float = 10.0                         # "auto" epochs: cross-validation extends the budget only
                                                     # while its projected time stays within this many seconds
    batch_size: int = 20                             # samples per step
    lr: float = 3e-3                                 # peak learning rate
    optimizer: Literal["sgd", "adam", "adamw"] = "adamw"
    momentum: float = 0.9                            # SGD only
    weight_decay: float | Literal["auto"] = 1.0      # L2 (sgd, adam) or decoupled (adamw); "auto": pick from grid
    weight_decay_grid: tuple[float, ...] = (0.0, 1e-2, 1e-1, 1.0)
    rank_grid: tuple[int, ...] = (2, 4, 8)
    form: Literal["skip", "last", "auto", "deep"] = "auto"  # skip: Skip-LoRA adapters on every tap (rank r); last: a
                                                     # dense update of the last layer through its input tap (FT-Last
                                                     # on the cache; saved as r = C with B fixed); deep: LoRA inside
                                                     # the backbone's layers (runtime/deep.py); auto: choose (deep
                                                     # only when the skip adapters fall short)
    deep_seconds: float = 30.0                       # form "auto": the deep tier is tried only when its projected
                                                     # CPU time (cross-validation + refit) is within this
    tap_scaling: Literal["none", "standard", "auto"] = "auto"  # standard: each tap feature standardised over the
                                                     # fine-tune samples (folded into A and the bias when saved)
    select_tolerance: float = 0.02                   # holdout "auto": val losses within this (nats) of the best tie;
                                                     # among ties the simplest wins (smallest r, largest decay)
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_epochs: float = 0.0                       # linear warm-up length in epochs
    clip_norm: float | None = None                   # clip the gradient's L2 norm to this
    lora_dropout: float = 0.0                        # dropout on the taps during training
    class_weights: Literal["none", "balanced"] | tuple[float, ...] = "none"
    val_fraction: float = 0.0                        # > 0: hold this share out (best epoch restored, "auto" chosen
                                                     # on it); 0: choose by cross-validation, then train on all
    cv_folds: int = 5                                # k of the k-fold cross-validation (val_fraction 0); 0: none,
                                                     # train exactly the given settings on every sample
    cv_repeats: int = 1                              # repeat the k folds with moved cut points (1: once; 0: auto,
                                                     # more the fewer the samples: 4 at 20, 1 from 100 on)
    cv_rule: Literal["paired", "best", "folds"] = "paired"  # paired: within one paired standard error of the best,
                                                     # raw taps first; best: the top score; folds: the old rule
                                                     # (within one SE of the folds' spread, last-layer form first)
    identity: bool = True                            # "no fine-tuning" is a candidate: when cross-validation finds
                                                     # no adapter better than the backbone alone (or the warm
                                                     # start), that is returned unchanged (CLI: nothing saved)
    epoch_fractions: tuple[float, ...] = (0.25, 0.5, 1.0)  # cross-validation also picks how many of `epochs` to train
    cv_rows_per_class: int = 128                     # cross-validate on at most this many samples x classes (outputs),
                                                     # evenly spaced in sample order (0: all); the refit uses all
    val_split: Literal["tail", "random"] = "tail"    # tail: each class's most recent samples (no time leak)
    patience: int | None = None                      # stop after this many epochs without a better val loss
    seed: int = 0
    recalibrate: Literal["none", "auto", "input", "bn", "both"] = "none"  # normalisation statistics re-estimated
                                                     # on the fine-tune samples (runtime/recalibrate.py): "auto"
                                                     # tries every kind the bundle allows, cross-validation chooses
    tap_statistics: Literal["auto", "none", "std", "map", "all"] = "auto"  # which of a bundle's tap statistics
                                                     # (docs/taps.md) the adapter reads; "auto": cross-validation
                                                     # chooses among none, each offered one, all

    @property
    def cross_validates(self) -> bool:
        """Whether the recipe is chosen by k-fold cross-validation (no holdout, cv_folds >= 2)."""
        return self.val_fraction == 0 and self.cv_folds >= 2

    def __post_init__(self):
        normalize(self)  # TypeError naming the field: TrainConfig(epochs=2.5), optimizer="lbfgs", ...
        if self.r != "auto":
            check_rank(self.r)
        check_alpha(self.lora_alpha)
        check(self.epochs == "auto" or self.epochs >= 1, f"`epochs` should be a positive integer or 'auto', found {self.epochs}")
        check(self.min_steps >= 1, f"`min_steps` should be a positive integer, found {self.min_steps}")
        check(self.cv_seconds > 0, f"`cv_seconds` should be a positive number of seconds, found {self.cv_seconds}")
        check(self.deep_seconds > 0, f"`deep_seconds` should be a positive number of seconds, found {self.deep_seconds}")
        check(self.cv_repeats >= 0, f"`cv_repeats` should be >= 0 (0: auto), found {self.cv_repeats}")
        check(self.batch_size >= 1, f"`batch_size` should be a positive integer, found {self.batch_size}")
        check(self.lr > 0 and math.isfinite(self.lr), f"`lr` should be a positive number, found {self.lr}")
        check(0 <= self.momentum < 1, f"`momentum` should be in [0, 1), found {self.momentum}")
        check(self.weight_decay == "auto" or self.weight_decay >= 0,
              f"`weight_decay` should be a number >= 0 or 'auto', found {self.weight_decay}")
        check(len(self.weight_decay_grid) >= 1 and all(w >= 0 for w in self.weight_decay_grid),
              f"`weight_decay_grid` should list numbers >= 0, found {self.weight_decay_grid}")
        check(len(self.rank_grid) >= 1, "`rank_grid` should list at least one rank")
        for r in self.rank_grid:
            check_rank(r, "rank_grid")
        check(self.warmup_epochs >= 0, f"`warmup_epochs` should be >= 0, found {self.warmup_epochs}")
        check(self.clip_norm is None or self.clip_norm > 0, f"`clip_norm` should be positive, found {self.clip_norm}")
        check(0 <= self.lora_dropout < 1, f"`lora_dropout` should be in [0, 1), found {self.lora_dropout}")
        check(isinstance(self.class_weights, str) or (all(w >= 0 for w in self.class_weights)
                                                      and sum(self.class_weights) > 0),
              f"`class_weights` should be 'none', 'balanced' or a list of weights >= 0 (not all 0), "
              f"found {self.class_weights}")
        check(0 <= self.val_fraction < 1, f"`val_fraction` should be in [0, 1), found {self.val_fraction}")
        check(self.patience is None or self.patience >= 1, f"`patience` should be positive, found {self.patience}")
        check(self.cv_folds == 0 or self.cv_folds >= 2, f"`cv_folds` should be 0 (off) or >= 2, found {self.cv_folds}")
        check(self.cv_rows_per_class >= 0,
              f"`cv_rows_per_class` should be >= 0 (0: all), found {self.cv_rows_per_class}")
        check(len(self.epoch_fractions) >= 1 and all(0 < f <= 1 for f in self.epoch_fractions),
              f"`epoch_fractions` should list numbers in (0, 1], found {self.epoch_fractions}")
        auto = [f for f in ("r", "weight_decay", "form", "tap_scaling")
                if getattr(self, f) == "auto" and (self.form != "deep" or f == "r")]  # deep reads no taps
        check(not auto or self.val_fraction > 0 or self.cv_folds >= 2,
              f"automatic selection of {auto} needs cross-validation (`cv_folds` >= 2) or a holdout (`val_fraction` > 0)")


@dataclass
class History:
    """What a fine-tune did: per-epoch metrics, choices made and where the time went."""
    epochs: list[dict] = field(default_factory=list)      # epoch, train_loss, val_loss, val_accuracy, lr, seconds
    val_metrics: dict = field(default_factory=dict)       # accuracy, macro_f1, loss (or mse, mae) of the result
    best_epoch: int = 0
    stopped: str = "completed"                            # completed | early_stopping | non_finite | identity
                                                          # (no fine-tuning won: nothing was trained)
    chosen: dict = field(default_factory=dict)            # r, lora_alpha, weight_decay actually used
    candidates: list[dict] = field(default_factory=list)  # model selection: settings and best val loss of each
    selection: dict = field(default_factory=dict)         # cross-validation: estimate of the chosen recipe and of
                                                          # no fine-tuning (mean, spread over folds), every candidate
    samples: dict = field(default_factory=dict)           # train / val counts
    cache_seconds: float = 0.0                            # backbone forward passes (filling the Skip-Cache)
    train_seconds: float = 0.0                            # everything after the cache was filled
    cache: dict = field(default_factory=dict)             # SkipCache.stats()

    def to_dict(self) -> dict:
        return to_dict(self)


def validation_split(targets: np.ndarray, fraction: float, how: str, seed: int, task: str):
    """(train_idx, val_idx). 'tail': the last `fraction` of each class in sample order (most recent)."""
    n, dtype = len(targets), index_dtype(len(targets))   # int32 below 2^31 samples (core/bookkeeping.py)
    if fraction == 0:
        return np.arange(n, dtype=dtype), np.arange(0, dtype=dtype)
    if how == "random":
        perm = np.random.default_rng(seed).permutation(n)
        k = max(1, int(round(fraction * n)))
        return np.sort(perm[k:]).astype(dtype), np.sort(perm[:k]).astype(dtype)
    tail = holdout_mask(targets, fraction, task)
    return np.flatnonzero(~tail).astype(dtype), np.flatnonzero(tail).astype(dtype)


def holdout_mask(targets: np.ndarray, fraction: float, task: str) -> np.ndarray:
    """True for the last `fraction` (rounded; >= 1, and never all, when a class has >= 2 samples) of each
    class in sample order (of all samples for regression): the most recent ones."""
    mask = np.zeros(len(targets), bool)
    for g in class_groups(targets, task):
        if len(g) >= 2:
            mask[g[len(g) - min(len(g) - 1, max(1, int(round(fraction * len(g))))):]] = True
    return mask


def training_split(m: Manifest, targets: np.ndarray, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx): the checked targets split as `config` asks; a ValueError when the split cannot
    train (split_or_reason says why). Checked before the backbone runs."""
    split, why = split_or_reason(m, targets, config)
    if split is None:
        raise ValueError(f"y: {why}")
    return split


def split_or_reason(m: Manifest, targets: np.ndarray,
                    config: TrainConfig) -> tuple[tuple[np.ndarray, np.ndarray] | None, str]:
    """((train_idx, val_idx), "") when the checked targets can train as `config` asks, else (None, why not):
    fewer than 2 classes (it would only learn to predict the one), fewer training samples than a batch."""
    n = len(targets)
    if m.task == "classification" and len(classes := classes_present(targets)) < 2:
        seen = ", ".join(m.classes[int(c)] for c in classes) or "none"
        return None, (f"all {n} samples have the same class ({seen}); fine-tuning needs samples of at least "
                      f"2 classes, or it only learns to predict that one")
    train_idx, val_idx = validation_split(targets, config.val_fraction, config.val_split, config.seed, m.task)
    if len(train_idx) < config.batch_size:
        return None, (f"the training split has {len(train_idx)} samples, fewer than `batch_size` "
                      f"{config.batch_size}; lower the batch size or collect more samples")
    return (train_idx, val_idx), ""
