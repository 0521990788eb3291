"""The training loop: one run of skip adapters over cached (or computed) taps, with seeded epochs,
validation, best-epoch restore and a NaN/Inf guard. runtime/train.py chooses the runs and builds the adapter.

Everything a run needs to continue lives in `Run.state()` (flat arrays + JSON-able values), so a
checkpoint written after any epoch resumes to the same adapter, bit for bit, as a run never stopped.
"""
from __future__ import annotations

import math
import time
from typing import Protocol

import numpy as np

from . import lora
from .losses import balanced_weights, cross_entropy, cross_entropy_grad, mse
from .metrics import epoch_metrics
from .optim import clip_grad_norm, from_config, learning_rate
from .shuffle import SplitMix64

MONITOR = 256  # train loss is monitored on a fixed sample of at most this many rows (both trainers)


class Features(Protocol):
    """Sample indices -> (y0 (n, C), taps (n, D)) float32: runtime/features.py's FeatureSource."""
    static: bool  # the same rows at every call (the Skip-Cache): evaluation sets are gathered once

    def __call__(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class Run:
    """Training state of one candidate (form, rank, weight decay)."""

    def __init__(self, layout: lora.Layout, *, scale: float, weight_decay: float, cfg, task: str,
                 init_flat: np.ndarray | None = None, form: str = "skip"):
        """cfg: the TrainConfig (epochs, optimiser, schedule, ...); init_flat: warm-start parameters;
        form: "skip" (Skip-LoRA on every tap) or "last" (lora.init_last: B fixed, A dense on the last tap)."""
        self.layout, self.scale, self.weight_decay, self.cfg, self.task = layout, scale, weight_decay, cfg, task
        self.form = form
        self.flat = init_flat.astype(np.float32, copy=True) if init_flat is not None else \
            lora.init_last(layout, scale) if form == "last" else lora.init(layout, cfg.seed)
        self.grad = np.zeros_like(self.flat)
        self.best_flat = self.flat.copy()
        decay = weight_decay
        if form == "last":   # B is held fixed: no gradient (zeroed every step) and no decay
            decay = np.full(self.flat.size, weight_decay, np.float32)
            lora.views(decay, layout)["B"][:] = 0.0
        self.opt = from_config(cfg, self.flat.size, decay)
        self.rng = np.random.default_rng(cfg.seed)  # lora dropout only
        self.shuffler = SplitMix64(cfg.seed)       # specified PRNG: every client shuffles identically
        self.epoch = self.step = self.best_epoch = self.since_best = 0
        self.best_loss: float | None = None
        self.epochs: list[dict] = []
        self.stopped: str | None = None  # completed | early_stopping | non_finite once finished

    def fit(self, features: Features, targets: np.ndarray, split: tuple[np.ndarray, np.ndarray], *,
            callback=None, on_epoch=None, val: tuple | None = None) -> None:
        """Run the remaining epochs on the samples split = (train_idx, val_idx). callback(epoch record) and
        on_epoch(self) after every epoch; `val`: the validation features when the caller already has them."""
        cfg, layout, scale, static = self.cfg, self.layout, self.scale, features.static
        train_idx, val_idx = split
        loss_fn, grad_fn = objective(layout.num_outputs, cfg.class_weights, self.task, targets, train_idx)
        p, g = lora.views(self.flat, layout), lora.views(self.grad, layout)
        bs = cfg.batch_size
        steps = math.ceil(len(train_idx) / bs)
        total = cfg.epochs * steps
        lrs = [learning_rate(i, total, cfg.lr, cfg.schedule, int(round(cfg.warmup_epochs * steps)))
               for i in range(total)]
        if val is None and len(val_idx) and static:
            val = features(val_idx)
        # train loss is monitored on a fixed sample of <= MONITOR rows: a full pass every epoch cost 10 % of training
        monitor = train_idx[::max(1, len(train_idx) // MONITOR)]
        train = features(monitor) if static else None
        fixed_b = g["B"] if self.form == "last" else None
        # the step loop runs ~50 numpy calls' worth of Python per batch: keep its lookups local
        dropout, clip, opt_step, flat, grad, forward, backward = (cfg.lora_dropout, cfg.clip_norm, self.opt.step,
                                                                 self.flat, self.grad, lora.forward, lora.backward)
        while self.stopped is None:
            t0 = time.perf_counter()
            good = flat.copy()
            perm = train_idx[self.shuffler.permutation(len(train_idx))]
            batch_losses, step = 0.0, self.step
            with np.errstate(over="ignore", invalid="ignore"):  # the guard below handles overflow
                for i in range(0, len(perm), bs):
                    idx = perm[i:i + bs]
                    y0, t = features(idx)
                    if dropout:
                        t = lora.tap_dropout(t, dropout, self.rng)
                    y, saved = forward(p, y0, t, layout, scale)
                    if not static:  # Skip-LoRA without a cache: a running mean costs nothing next to the backbone
                        batch_losses += loss_fn(y, idx) * len(idx)
                    backward(grad_fn(y, idx), saved, p, g, layout, scale)
                    if fixed_b is not None:
                        fixed_b[:] = 0.0
                    if clip:
                        clip_grad_norm(grad, clip)
                    opt_step(flat, grad, lrs[step])
                    step += 1
            self.step = step
            self.epoch += 1
            if not np.isfinite(self.flat).all():
                self.flat[:] = good  # keep the last good parameters (end of the previous epoch)
                self.stopped = "non_finite"
                break
            with np.errstate(over="ignore", invalid="ignore"):
                train_loss = loss_fn(lora.forward(p, *train, layout, scale)[0], monitor) if static else \
                    batch_losses / len(perm)
            rec = {"epoch": self.epoch, "train_loss": train_loss, "lr": lrs[self.step - 1],
                   "seconds": time.perf_counter() - t0}
            if len(val_idx):
                vy0, vt = val if val is not None else features(val_idx)
                val_metrics = epoch_metrics(lora.forward(p, vy0, vt, layout, scale)[0], targets[val_idx], self.task)
                rec.update({f"val_{k}": v for k, v in val_metrics.items()})
                if self.best_loss is None or rec["val_loss"] < self.best_loss:
                    self.best_loss, self.best_epoch, self.since_best = rec["val_loss"], self.epoch, 0
                    self.best_flat[:] = self.flat
                else:
                    self.since_best += 1
            else:
                self.best_epoch = self.epoch
                self.best_flat[:] = self.flat
            self.epochs.append(rec)
            if cfg.patience and self.since_best >= cfg.patience:
                self.stopped = "early_stopping"
            elif self.epoch >= cfg.epochs:
                self.stopped = "completed"
            if callback:
                callback({**rec, "epochs": cfg.epochs, "r": layout.rank, "weight_decay": self.weight_decay})
            if on_epoch:
                on_epoch(self)

    def summary(self) -> dict:
        """The candidate's settings and outcome, for History.candidates."""
        return {"form": self.form, "r": self.layout.rank, "lora_alpha": self.scale * self.layout.rank,
                "weight_decay": self.weight_decay, "best_val_loss": self.best_loss, "best_epoch": self.best_epoch,
                "stopped": self.stopped}

    @property
    def result(self) -> np.ndarray:
        """The parameters to keep: the best validation epoch's (or the last good ones)."""
        return self.best_flat if self.best_epoch else self.flat

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(JSON-able values, arrays) that restore this run exactly."""
        arrays = {"flat": self.flat, "best_flat": self.best_flat, **{f"opt.{k}": v for k, v in self.opt.buffers().items()}}
        meta = {"epoch": self.epoch, "step": self.step, "best_epoch": self.best_epoch, "since_best": self.since_best,
                "best_loss": self.best_loss, "epochs": self.epochs, "stopped": self.stopped,
                "rng": self.rng.bit_generator.state, "shuffle": self.shuffler.state, "opt_t": getattr(self.opt, "t", 0)}
        return meta, arrays

    def restore(self, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        self.flat[:], self.best_flat[:] = arrays["flat"], arrays["best_flat"]
        for k, v in self.opt.buffers().items():
            v[:] = arrays[f"opt.{k}"]
        if hasattr(self.opt, "t"):
            self.opt.t = meta["opt_t"]
        self.rng.bit_generator.state = meta["rng"]
        self.shuffler.state = meta["shuffle"]
        self.epoch, self.step, self.best_epoch = meta["epoch"], meta["step"], meta["best_epoch"]
        self.since_best, self.best_loss, self.epochs, self.stopped = (meta["since_best"], meta["best_loss"],
                                                                       meta["epochs"], meta["stopped"])


def objective(c: int, class_weights, task: str, targets: np.ndarray, train_idx: np.ndarray):
    """(loss(y, idx) -> float, grad(y, idx) -> dL/dy computed in place in y) for the samples idx."""
    if task != "classification":
        def loss(y, idx):
            return mse(y, targets[idx])[0]

        def grad(y, idx):
            y -= targets[idx]
            y *= 2.0 / y.size
            return y
        return loss, grad
    onehot = np.eye(c, dtype=np.float32)[targets]
    weights = loss_weights(class_weights, targets[train_idx], c)
    sample_w = weights[targets] if weights is not None else None

    def loss(y, idx):
        return cross_entropy(y, targets[idx], weights)[0]

    def grad(y, idx):
        return cross_entropy_grad(y, onehot[idx], None if sample_w is None else sample_w[idx])
    return loss, grad


def loss_weights(class_weights, targets: np.ndarray, c: int) -> np.ndarray | None:
    """Per-class loss weights of TrainConfig.class_weights: None ('none'), scikit-learn's 'balanced' on the
    training labels `targets`, or the given list."""
    if class_weights == "none":
        return None
    w = balanced_weights(targets, c) if class_weights == "balanced" else np.asarray(class_weights, np.float32)
    if len(w) != c:
        raise ValueError(f"`class_weights` should have {c} entries (one per class), found {len(w)}")
    return w
