"""The training loop: Skip2-LoRA fine-tuning of skip adapters on cached backbone outputs."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Literal

import numpy as np

from . import lora
from .adapter import Adapter, AdapterConfig
from .backbone import Backbone
from .cache import SkipCache
from .data import as_inputs, as_targets, num_samples
from .losses import balanced_weights, cross_entropy, cross_entropy_grad, mse
from .metrics import evaluate_outputs
from .optim import OPTIMIZERS, clip_grad_norm, learning_rate
from .schema import check, to_dict


@dataclass(frozen=True)
class TrainConfig:
    """Fine-tuning settings. Defaults are the ones measured on the fan and har protocols (README)."""
    r: int | Literal["auto"] = 4                     # adapter rank, or "auto": pick from rank_grid on validation loss
    lora_alpha: float | None = None                  # scale s = lora_alpha / r; None -> 2 r (s = 2)
    bias: bool = True                                # learn an output bias too
    epochs: int = 30                                 # passes over the training split
    batch_size: int = 20                             # samples per step
    lr: float = 3e-3                                 # peak learning rate
    optimizer: Literal["sgd", "adam", "adamw"] = "adamw"
    momentum: float = 0.9                            # SGD only
    weight_decay: float | Literal["auto"] = 1.0      # L2 (sgd, adam) or decoupled (adamw); "auto": pick from grid
    weight_decay_grid: tuple[float, ...] = (0.0, 1e-2, 1e-1, 1.0)
    rank_grid: tuple[int, ...] = (2, 4, 8)
    select_tolerance: float = 0.02                   # "auto": val losses within this (nats) of the best tie;
                                                     # among ties the simplest wins (smallest r, largest decay)
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_epochs: float = 0.0                       # linear warm-up length in epochs
    clip_norm: float | None = None                   # clip the gradient's L2 norm to this
    lora_dropout: float = 0.0                        # dropout on the taps during training
    class_weights: Literal["none", "balanced"] | tuple[float, ...] = "none"
    val_fraction: float = 0.2                        # held out for early stopping and model selection
    val_split: Literal["tail", "random"] = "tail"    # tail: each class's most recent samples (no time leak)
    patience: int | None = None                      # stop after this many epochs without a better val loss
    seed: int = 0

    def __post_init__(self):
        check(self.r == "auto" or self.r >= 1, f"`r` should be a positive integer value but the value passed is {self.r}")
        check(self.lora_alpha is None or self.lora_alpha > 0, f"`lora_alpha` should be positive, found {self.lora_alpha}")
        check(self.epochs >= 1, f"`epochs` should be a positive integer, found {self.epochs}")
        check(self.batch_size >= 1, f"`batch_size` should be a positive integer, found {self.batch_size}")
        check(self.lr > 0 and math.isfinite(self.lr), f"`lr` should be a positive number, found {self.lr}")
        check(0 <= self.momentum < 1, f"`momentum` should be in [0, 1), found {self.momentum}")
        check(self.weight_decay == "auto" or self.weight_decay >= 0,
              f"`weight_decay` should be a number >= 0 or 'auto', found {self.weight_decay}")
        check(len(self.weight_decay_grid) >= 1 and all(w >= 0 for w in self.weight_decay_grid),
              f"`weight_decay_grid` should list numbers >= 0, found {self.weight_decay_grid}")
        check(len(self.rank_grid) >= 1 and all(r >= 1 for r in self.rank_grid),
              f"`rank_grid` should list positive ranks, found {self.rank_grid}")
        check(self.warmup_epochs >= 0, f"`warmup_epochs` should be >= 0, found {self.warmup_epochs}")
        check(self.clip_norm is None or self.clip_norm > 0, f"`clip_norm` should be positive, found {self.clip_norm}")
        check(0 <= self.lora_dropout < 1, f"`lora_dropout` should be in [0, 1), found {self.lora_dropout}")
        check(isinstance(self.class_weights, str) or all(w >= 0 for w in self.class_weights),
              f"`class_weights` should be 'none', 'balanced' or a list of weights >= 0, found {self.class_weights}")
        check(0 <= self.val_fraction < 1, f"`val_fraction` should be in [0, 1), found {self.val_fraction}")
        check(self.patience is None or self.patience >= 1, f"`patience` should be positive, found {self.patience}")
        needs_val = self.weight_decay == "auto" or self.r == "auto"
        check(not needs_val or self.val_fraction > 0, "automatic selection ('auto') needs `val_fraction` > 0")


@dataclass
class History:
    """What a fine-tune did: per-epoch metrics, choices made and where the time went."""
    epochs: list[dict] = field(default_factory=list)      # epoch, train_loss, val_loss, val_accuracy, lr, seconds
    best_epoch: int = 0
    stopped: str = "completed"                            # completed | early_stopping | non_finite
    chosen: dict = field(default_factory=dict)            # r, lora_alpha, weight_decay actually used
    candidates: list[dict] = field(default_factory=list)  # model selection: settings and best val loss of each
    samples: dict = field(default_factory=dict)           # train / val counts
    cache_seconds: float = 0.0                            # backbone forward passes (filling the Skip-Cache)
    train_seconds: float = 0.0                            # everything after the cache was filled
    cache: dict = field(default_factory=dict)             # SkipCache.stats()

    def to_dict(self) -> dict:
        return to_dict(self)


def validation_split(targets: np.ndarray, fraction: float, how: str, seed: int, task: str):
    """(train_idx, val_idx). 'tail': the last `fraction` of each class in sample order (most recent)."""
    n = len(targets)
    if fraction == 0:
        return np.arange(n), np.arange(0)
    if how == "random":
        perm = np.random.default_rng(seed).permutation(n)
        k = max(1, int(round(fraction * n)))
        return np.sort(perm[k:]), np.sort(perm[:k])
    groups = [np.flatnonzero(targets == c) for c in np.unique(targets)] if task == "classification" else [np.arange(n)]
    val = [g[len(g) - min(len(g) - 1, max(1, int(round(fraction * len(g))))):] for g in groups if len(g) >= 2]
    val = np.sort(np.concatenate(val)) if val else np.arange(0)
    return np.setdiff1d(np.arange(n), val), val


def finetune(backbone: Backbone, x, y, config: TrainConfig = TrainConfig(), *, cache: SkipCache | None = None,
             init: Adapter | None = None, use_cache: bool = True,
             callback: Callable[[dict], None] | None = None) -> tuple[Adapter, History]:
    """Train skip adapters on (x, y) over the frozen backbone; returns the best adapter and its history.

    With `use_cache` (Skip2-LoRA) the backbone runs once per sample not already in `cache`; without it
    (Skip-LoRA) the backbone runs on every mini-batch. `init` warm-starts from an existing adapter.
    """
    m = backbone.manifest
    inputs = as_inputs(x, m)
    n = num_samples(inputs)
    targets = as_targets(y, m, n)
    if m.task == "classification" and len(np.unique(targets)) < 2:
        raise ValueError(f"y: all {n} samples have the same class ({m.classes[int(targets[0])]}); fine-tuning "
                         f"needs samples of at least 2 classes, or it only learns to predict that one")
    if init is not None:
        init.check_backbone(m, "initial adapter")
    train_idx, val_idx = validation_split(targets, config.val_fraction, config.val_split, config.seed, m.task)
    if len(train_idx) < config.batch_size:
        raise ValueError(f"the training split has {len(train_idx)} samples, fewer than `batch_size` "
                         f"{config.batch_size}; lower the batch size or collect more samples")
    history = History(samples={"train": int(len(train_idx)), "val": int(len(val_idx))})
    start = time.perf_counter()
    if use_cache:
        cache = cache if cache is not None else SkipCache(backbone)
        if cache.backbone.fingerprint != backbone.fingerprint:
            raise ValueError("the cache belongs to another backbone (fingerprints differ)")
        values, c = _cached_rows(cache, inputs), m.num_outputs

        def features(idx):
            v = values[idx]
            return v[:, :c], v[:, c:]
        history.cache = cache.stats()
    else:
        def features(idx):
            return backbone.features({k: v[idx] for k, v in inputs.items()}, validated=True)
    history.cache_seconds = time.perf_counter() - start

    ranks = [init.config.r] if init is not None else (list(config.rank_grid) if config.r == "auto" else [config.r])
    decays = list(config.weight_decay_grid) if config.weight_decay == "auto" else [config.weight_decay]
    runs = []
    for r in ranks:
        for wd in decays:
            alpha = init.config.lora_alpha if init is not None else (config.lora_alpha or 2.0 * r)
            layout = lora.Layout(m.tap_names, m.tap_widths, m.num_outputs, r,
                                 init.config.bias if init is not None else config.bias)
            run = _train(layout, alpha / r, wd, features, use_cache, targets, train_idx, val_idx, config, m.task,
                         init.flat if init is not None else None, callback)
            record = {"r": r, "lora_alpha": alpha, "weight_decay": wd, "best_val_loss": run["best_val_loss"],
                      "best_epoch": run["best_epoch"], "stopped": run["stopped"]}
            history.candidates.append(record)
            runs.append({**run, "layout": layout, "record": record})
    best = _select(runs, config.select_tolerance)
    history.epochs, history.best_epoch, history.stopped = best["epochs"], best["best_epoch"], best["stopped"]
    history.chosen = {k: best["record"][k] for k in ("r", "lora_alpha", "weight_decay")}
    if len(history.candidates) == 1:
        history.candidates = []
    history.train_seconds = time.perf_counter() - start - history.cache_seconds
    history.cache = cache.stats() if use_cache else {}
    config_dict = {"settings": to_dict(config), "chosen": history.chosen, "best_epoch": history.best_epoch,
                   "stopped": history.stopped, "samples": history.samples,
                   "val_metrics": best["epochs"][best["best_epoch"] - 1].get("val", {}) if best["epochs"] else {}}
    acfg = AdapterConfig(backbone_fingerprint=m.fingerprint, target_taps=m.tap_names, tap_widths=m.tap_widths,
                         num_outputs=m.num_outputs, task=m.task, r=best["layout"].rank,
                         lora_alpha=float(history.chosen["lora_alpha"]), bias=best["layout"].bias,
                         classes=m.classes, training=config_dict)
    return Adapter(acfg, best["flat"]), history


def _cached_rows(cache: SkipCache, inputs: dict) -> np.ndarray:
    """The samples' cached rows as one contiguous float32 array (fast to index every step) when that
    fits the memory budget; otherwise a lazy view that reads rows from the on-disk cache per batch."""
    rows = cache.rows(inputs)
    need = len(rows) * cache.width * 4
    if cache.memory_budget is None or need <= cache.memory_budget:
        return cache.values[rows].astype(np.float32)
    return _LazyRows(cache.values, rows)


class _LazyRows:
    """values[rows[idx]] as float32, without loading every row (memory-budgeted, on-disk cache)."""

    def __init__(self, values: np.ndarray, rows: np.ndarray):
        self.values, self.rows = values, rows

    def __getitem__(self, idx):
        return self.values[np.sort(self.rows[idx])].astype(np.float32)


def _select(runs: list[dict], tolerance: float) -> dict:
    """The simplest run (smallest rank, then largest weight decay) whose validation loss is within
    `tolerance` of the best one. On shifted sensor data validation loss is near zero for every setting
    (the fan protocol: < 0.01 nats), so ties are common and the most regularised model generalises best."""
    def loss(run):
        return run["best_val_loss"] if run["best_val_loss"] is not None else math.inf
    floor = min(loss(run) for run in runs)
    ties = [run for run in runs if loss(run) <= floor + tolerance]
    return min(ties, key=lambda run: (run["layout"].rank, -run["record"]["weight_decay"]))


def _train(layout, scale, weight_decay, features, static, targets, train_idx, val_idx, cfg: TrainConfig, task,
           init_flat, callback) -> dict:
    """One training run: seeded mini-batch epochs, val tracking, best-epoch restore, NaN/Inf guard."""
    rng = np.random.default_rng(cfg.seed)
    flat = init_flat.astype(np.float32, copy=True) if init_flat is not None else lora.init(layout, cfg.seed)
    grad = np.zeros_like(flat)
    p, g = lora.views(flat, layout), lora.views(grad, layout)
    opt = OPTIMIZERS[cfg.optimizer](flat.size, weight_decay=weight_decay,
                                    **({"momentum": cfg.momentum} if cfg.optimizer == "sgd" else {}))
    loss_fn, grad_fn = _objective(layout, cfg, task, targets, train_idx)
    bs = cfg.batch_size
    steps = math.ceil(len(train_idx) / bs)
    total, warmup = cfg.epochs * steps, int(round(cfg.warmup_epochs * steps))
    lrs = [learning_rate(i, total, cfg.lr, cfg.schedule, warmup) for i in range(total)]
    # cached features never change: gather the evaluation sets once
    val = features(val_idx) if len(val_idx) and static else None
    train = features(train_idx) if static else None
    good, best_flat = flat.copy(), flat.copy()
    best_loss, best_epoch, stopped, since_best, epochs, step = None, 0, "completed", 0, [], 0
    keep = 1.0 - cfg.lora_dropout
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        perm = rng.permutation(train_idx)
        batch_losses = 0.0
        for i in range(0, len(perm), bs):
            idx = perm[i:i + bs]
            y0, t = features(idx)
            if cfg.lora_dropout:
                t = t * (rng.random(t.shape, np.float32) < keep) / keep
            y, saved = lora.forward(p, y0, t, layout, scale)
            if not static:  # Skip-LoRA without a cache: the running mean costs nothing next to the backbone
                batch_losses += loss_fn(y, idx) * len(idx)
            lora.backward(grad_fn(y, idx), saved, p, g, layout, scale)
            if cfg.clip_norm:
                clip_grad_norm(grad, cfg.clip_norm)
            opt.step(flat, grad, lrs[step])
            step += 1
        if not np.isfinite(flat).all():
            flat[:] = good  # keep the last good parameters (end of the previous epoch)
            stopped = "non_finite"
            break
        good[:] = flat
        train_loss = loss_fn(lora.forward(p, *train, layout, scale)[0], train_idx) if static else \
            batch_losses / len(perm)
        rec = {"epoch": epoch, "train_loss": train_loss, "lr": lrs[step - 1], "seconds": time.perf_counter() - t0}
        if len(val_idx):
            vy0, vt = val if val is not None else features(val_idx)
            rec["val"] = evaluate_outputs(lora.forward(p, vy0, vt, layout, scale)[0], targets[val_idx], task)
            rec["val_loss"] = rec["val"]["loss"]
            if best_loss is None or rec["val_loss"] < best_loss:
                best_loss, best_epoch, since_best = rec["val_loss"], epoch, 0
                best_flat[:] = flat
            else:
                since_best += 1
        else:
            best_epoch = epoch
        epochs.append(rec)
        if callback:
            callback({**rec, "epochs": cfg.epochs, "r": layout.rank, "weight_decay": weight_decay})
        if cfg.patience and since_best >= cfg.patience:
            stopped = "early_stopping"
            break
    if best_loss is not None:
        flat = best_flat
    return {"flat": flat, "epochs": epochs, "best_epoch": best_epoch, "best_val_loss": best_loss, "stopped": stopped}


def _objective(layout, cfg: TrainConfig, task: str, targets: np.ndarray, train_idx: np.ndarray):
    """(loss(y, idx) -> float, grad(y, idx) -> dL/dy in place) for the samples idx."""
    if task != "classification":
        def loss(y, idx):
            return mse(y, targets[idx])[0]

        def grad(y, idx):
            y -= targets[idx]
            y *= 2.0 / y.size
            return y
        return loss, grad
    c = layout.num_outputs
    onehot = np.eye(c, dtype=np.float32)[targets]
    weights = None if cfg.class_weights == "none" else \
        balanced_weights(targets[train_idx], c) if cfg.class_weights == "balanced" else \
        np.asarray(cfg.class_weights, np.float32)
    if weights is not None and len(weights) != c:
        raise ValueError(f"`class_weights` should have {c} entries (one per class), found {len(weights)}")
    sample_w = weights[targets] if weights is not None else None

    def loss(y, idx):
        return cross_entropy(y, targets[idx], weights)[0]

    def grad(y, idx):
        return cross_entropy_grad(y, onehot[idx], None if sample_w is None else sample_w[idx])
    return loss, grad
