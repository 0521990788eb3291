"""The training loop: one run of skip adapters over cached (or computed) taps, with seeded epochs,
validation, best-epoch restore and a NaN/Inf guard, around the training engine at M = 1 (stack.py).
runtime/train.py chooses the runs and builds the adapter.

Everything a run needs to continue lives in `Run.state()` (flat arrays + JSON-able values), so a
checkpoint written after any epoch resumes to the same adapter, bit for bit, as a run never stopped.
"""
from __future__ import annotations

import math
import time
from typing import Protocol

import numpy as np

from . import lora
from .losses import class_weights as class_weights_of
from .losses import cross_entropy, loss_grad, mse
from .metrics import epoch_metrics
from .optim import clip_grad_norm, from_config, learning_rate
from .shuffle import SplitMix64
from .stack import Stack

MONITOR = 256  # train loss is monitored on a fixed sample of at most this many rows (both trainers)


class Features(Protocol):
    """Sample indices -> (y0 (n, C), taps (n, D)) float32: runtime/features.py's FeatureSource."""
    static: bool  # the same rows at every call (the Skip-Cache): evaluation sets are gathered once

    def __call__(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class Run:
    """Training state of one candidate (form, rank, weight decay): the engine's stack at M = 1 (stack.py)."""

    def __init__(self, layout: lora.Layout, *, scale: float, weight_decay: float, cfg, task: str,
                 init_flat: np.ndarray | None = None, form: str = "skip"):
        """cfg: the TrainConfig (epochs, optimiser, schedule, ...); init_flat: warm-start parameters;
        form: "skip" (Skip-LoRA on every tap) or "last" (lora.init_last: B fixed, A dense on the last tap)."""
        self.layout, self.scale, self.weight_decay, self.cfg, self.task = layout, scale, weight_decay, cfg, task
        self.form = form
        # one model's flat buffer is lora's layout (A (1, d, 1, r) is A (d, r)): `flat` is what is saved
        self.stack = Stack(layout, 1, 1, scale, np.array([weight_decay], np.float32), cfg, init_flat, form)
        self.flat, self.grad = self.stack.flat, self.stack.grad
        self.best_flat = self.flat.copy()
        # B of the last form is held fixed: no gradient and no decay (the stack's per-element decays)
        self.opt = from_config(cfg, self.flat.size, self.stack.decay if form == "last" else weight_decay)
        self.rng = np.random.default_rng(cfg.seed)  # lora dropout only
        self.shuffler = SplitMix64(cfg.seed)       # specified PRNG: every client shuffles identically
        self.epoch = self.step = self.best_epoch = self.since_best = 0
        self.best_loss: float | None = None
        self.epochs: list[dict] = []
        self.stopped: str | None = None  # completed | early_stopping | non_finite once finished

    def fit(self, features: Features, targets: np.ndarray, split: tuple[np.ndarray, np.ndarray], *,
            callback=None, on_epoch=None, val: tuple | None = None) -> None:
        """Run the remaining epochs on the samples split = (train_idx, val_idx): the validation rows never enter
        a batch (a fold whose rows weigh 0). callback(epoch record) and on_epoch(self) after every epoch;
        `val`: the validation features when the caller already has them."""
        cfg, (train_idx, val_idx) = self.cfg, split
        obj = Objective(self.layout.num_outputs, cfg.class_weights, self.task, targets, train_idx)
        steps = math.ceil(len(train_idx) / cfg.batch_size)
        lrs = [learning_rate(i, cfg.epochs * steps, cfg.lr, cfg.schedule, int(round(cfg.warmup_epochs * steps)))
               for i in range(cfg.epochs * steps)]
        if val is None and len(val_idx) and features.static:
            val = features(val_idx)
        # train loss is monitored on a fixed sample of <= MONITOR rows: a full pass every epoch cost 10 % of training
        monitor = train_idx[::max(1, len(train_idx) // MONITOR)]
        train = features(monitor) if features.static else None
        while self.stopped is None:
            t0, good = time.perf_counter(), self.flat.copy()
            perm = train_idx[self.shuffler.permutation(len(train_idx))]
            with np.errstate(over="ignore", invalid="ignore"):  # the guard below handles overflow
                batch_loss = self._epoch(features, perm, obj, lrs)
            self.epoch += 1
            if not np.isfinite(self.flat).all():
                self.flat[:] = good  # keep the last good parameters (end of the previous epoch)
                self.stopped = "non_finite"
                break
            with np.errstate(over="ignore", invalid="ignore"):
                loss = obj.loss(self.outputs(*train), monitor) if train is not None else batch_loss
            rec = self._record(loss, lrs[self.step - 1], time.perf_counter() - t0, targets, val_idx, val, features)
            if callback:
                callback({**rec, "epochs": cfg.epochs, "r": self.layout.rank, "weight_decay": self.weight_decay})
            if on_epoch:
                on_epoch(self)

    def _epoch(self, features: Features, perm: np.ndarray, obj: Objective, lrs: list[float]) -> float:
        """One pass over the rows `perm` in batches; the mean loss of the batches when the rows are not cached
        (Skip-LoRA without a cache: a running mean costs nothing next to the backbone), else 0."""
        cfg, stack, static, total = self.cfg, self.stack, features.static, 0.0
        for i in range(0, len(perm), cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            y0, t = features(idx)
            if cfg.lora_dropout:
                t = lora.tap_dropout(t, cfg.lora_dropout, self.rng)
            y, h = stack.forward(y0, t[None])
            if not static:
                total += obj.loss(y[0], idx) * len(idx)
            stack.backward(obj.grad(y, idx), h, t[None])
            if cfg.clip_norm:
                clip_grad_norm(self.grad, cfg.clip_norm)
            self.opt.step(self.flat, self.grad, lrs[self.step])
            self.step += 1
        return total / len(perm)

    def _record(self, train_loss: float, lr: float, seconds: float, targets: np.ndarray, val_idx: np.ndarray,
                val: tuple | None, features: Features) -> dict:
        """The epoch's record (appended to self.epochs), the best epoch so far and why the run stops, if it does."""
        rec = {"epoch": self.epoch, "train_loss": train_loss, "lr": lr, "seconds": seconds}
        if len(val_idx):
            metrics = epoch_metrics(self.outputs(*(val if val is not None else features(val_idx))),
                                    targets[val_idx], self.task)
            rec.update({f"val_{k}": v for k, v in metrics.items()})
        if not len(val_idx) or self.best_loss is None or rec["val_loss"] < self.best_loss:
            self.best_loss, self.best_epoch, self.since_best = rec.get("val_loss"), self.epoch, 0
            self.best_flat[:] = self.flat
        else:
            self.since_best += 1
        self.epochs.append(rec)
        if self.cfg.patience and self.since_best >= self.cfg.patience:
            self.stopped = "early_stopping"
        elif self.epoch >= self.cfg.epochs:
            self.stopped = "completed"
        return rec

    def outputs(self, y0: np.ndarray, t: np.ndarray) -> np.ndarray:
        """The adapted outputs y (N, C) of rows (y0 (N, C), taps (N, D)) with the current parameters."""
        return self.stack.forward(y0, t[None])[0][0]

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


class Objective:
    """The training loss of one run over the samples `train_idx`: `loss(y, idx)` -> float and `grad(y, idx)`, its
    gradient computed in place in y (..., N, C) (losses.loss_grad), with the class weights of `class_weights`."""

    def __init__(self, c: int, class_weights, task: str, targets: np.ndarray, train_idx: np.ndarray):
        self.task, self.targets = task, targets
        self.weights = None if task != "classification" else class_weights_of(class_weights, targets[train_idx], c)
        self.sample_w = None if self.weights is None else self.weights[targets]
        self.one_hot = np.eye(c, dtype=np.float32) if task == "classification" else None  # rows taken per batch

    def loss(self, y: np.ndarray, idx: np.ndarray) -> float:
        if self.task != "classification":
            return mse(y, self.targets[idx])[0]
        return cross_entropy(y, self.targets[idx], self.weights)[0]

    def grad(self, y: np.ndarray, idx: np.ndarray) -> np.ndarray:
        w = None if self.sample_w is None else self.sample_w[idx]
        rows = self.targets[idx] if self.one_hot is None else self.one_hot[self.targets[idx]]
        return loss_grad(y, rows, 1.0 / len(idx) if w is None else (w / np.add.reduce(w))[:, None], self.task)
