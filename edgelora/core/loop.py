"""The training loop: runs of skip adapters over cached (or computed) taps, with seeded epochs, validation,
best-epoch restore and a NaN/Inf guard, each around the training engine at M = 1 (stack.py). `fit` trains a
holdout's candidates side by side over shared batches, a recipe's tap scalings as one stack (`side_by_side`),
each ending where it would alone; runtime/train.py chooses the runs and builds the adapter.

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
from .scaling import scaled
from .shuffle import SplitMix64
from .stack import Stack

MONITOR = 256  # train loss is monitored on a fixed sample of at most this many rows (both trainers)


class Features(Protocol):
    """Sample indices -> (y0 (n, C), taps (n, D)) float32: runtime/features.py's FeatureSource."""
    static: bool  # the same rows at every call (the Skip-Cache): evaluation sets are gathered once

    def __call__(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class Run:
    """Training state of one candidate (form, rank, weight decay, tap scaling): the engine's stack at M = 1
    (stack.py), or one model of a stack that trains a recipe under each tap scaling (`side_by_side`)."""

    def __init__(self, layout: lora.Layout, *, scale: float, weight_decay: float, cfg, task: str,
                 init_flat: np.ndarray | None = None, form: str = "skip", tap_scaling: str = "none",
                 shared: tuple | None = None):
        """cfg: the TrainConfig (epochs, optimiser, schedule, ...); init_flat: warm-start parameters;
        form: "skip" (Skip-LoRA on every tap) or "last" (lora.init_last: B fixed, A dense on the last tap);
        tap_scaling: how `fit` scales the taps it reads for this run (core/scaling.py); shared: (stack,
        optimiser, model index) when the run is one model of a stack (`side_by_side`), else its own."""
        self.layout, self.scale, self.weight_decay, self.cfg, self.task = layout, scale, weight_decay, cfg, task
        self.form, self.tap_scaling = form, tap_scaling
        if shared is None:
            stack = Stack(layout, 1, 1, scale, np.array([weight_decay], np.float32), cfg, init_flat, form)
            # B of the last form is held fixed: no gradient and no decay (the stack's per-element decays)
            shared = (stack, from_config(cfg, stack.flat.size, stack.decay if form == "last" else weight_decay), 0)
        self.stack, self.opt, self.model = shared
        # one model's run of the stack's buffers is lora's layout (A (1, d, 1, r) is A (d, r)): `flat` is what is saved
        self.flat = self.stack.model(self.stack.flat, self.model)
        self.best_flat = self.flat.copy()
        self.detached: tuple | None = None   # a stopped run's own (optimiser buffers, step count): its stack trains on
        self.rng = np.random.default_rng(cfg.seed)  # lora dropout only
        self.shuffler = SplitMix64(cfg.seed)       # specified PRNG: every client shuffles identically
        self.epoch = self.step = self.best_epoch = self.since_best = 0
        self.best_loss: float | None = None
        self.epochs: list[dict] = []
        self.stopped: str | None = None  # completed | early_stopping | non_finite once finished

    def fit(self, features: Features, targets: np.ndarray, split: tuple[np.ndarray, np.ndarray], *,
            callback=None, on_epoch=None, val: tuple | None = None) -> None:
        """Run the remaining epochs on the samples split = (train_idx, val_idx) (`fit` with this run alone);
        on_epoch(self) after every epoch; `val`: the validation features when the caller already has them."""
        fit([self], features, targets, split, callback=callback, on_epoch=on_epoch and (lambda runs: on_epoch(self)),
            val=None if val is None else {self.tap_scaling: val})

    def _end_epoch(self, good: np.ndarray, batch_loss: float, seconds: float, obj: Objective, data: dict) -> dict | None:
        """Close the epoch just trained: the NaN/Inf guard (back to `good`, the parameters it started from, and stop),
        else the epoch's record (with the run's settings, for the callback). data: what `fit` holds for this run
        (targets, val_idx, the monitored rows, the learning rates, its scaled train and validation rows, a reader)."""
        self.epoch += 1
        if not np.isfinite(self.flat).all():
            self.flat[:] = good  # keep the last good parameters (end of the previous epoch)
            self.stopped = "non_finite"
            self._detach()
            return None
        train, val = data["train"], data["val"]
        with np.errstate(over="ignore", invalid="ignore"):
            loss = obj.loss(self.outputs(*train), data["monitor"]) if train is not None else batch_loss
        rec = {"epoch": self.epoch, "train_loss": loss, "lr": data["lrs"][self.step - 1], "seconds": seconds}
        if len(val_idx := data["val_idx"]):
            metrics = epoch_metrics(self.outputs(*(val if val is not None else data["read"](val_idx))),
                                    data["targets"][val_idx], self.task)
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
        if self.stopped is not None:
            self._detach()
        return {**rec, "epochs": self.cfg.epochs, "r": self.layout.r, "weight_decay": self.weight_decay}

    def outputs(self, y0: np.ndarray, t: np.ndarray) -> np.ndarray:
        """The adapted outputs y (N, C) of rows (y0 (N, C), taps (N, D)) with the current parameters."""
        return self.stack.forward(y0, t[None])[0][self.model]

    def _optimiser_state(self) -> tuple[dict[str, np.ndarray], int]:
        """This run's part of its optimiser's buffers (lora's layout) and the optimiser's step count."""
        if self.detached is not None:
            return self.detached
        return {k: self.stack.model(v, self.model) for k, v in self.opt.buffers().items()}, getattr(self.opt, "t", 0)

    def _detach(self) -> None:
        """Once stopped, keep this run's parameters and optimiser state as they are (its stack may train on)."""
        buffers, t = self._optimiser_state()
        self.flat, self.detached = self.flat.copy(), ({k: v.copy() for k, v in buffers.items()}, t)

    def summary(self) -> dict:
        """The candidate's settings and outcome, for History.candidates."""
        return {"form": self.form, "r": self.layout.r, "lora_alpha": self.scale * self.layout.r,
                "weight_decay": self.weight_decay, "best_val_loss": self.best_loss, "best_epoch": self.best_epoch,
                "stopped": self.stopped}

    @property
    def result(self) -> np.ndarray:
        """The parameters to keep: the best validation epoch's (or the last good ones)."""
        return self.best_flat if self.best_epoch else self.flat

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(JSON-able values, arrays) that restore this run exactly."""
        buffers, t = self._optimiser_state()
        arrays = {"flat": self.flat, "best_flat": self.best_flat, **{f"opt.{k}": v for k, v in buffers.items()}}
        meta = {"epoch": self.epoch, "step": self.step, "best_epoch": self.best_epoch, "since_best": self.since_best,
                "best_loss": self.best_loss, "epochs": self.epochs, "stopped": self.stopped,
                "rng": self.rng.bit_generator.state, "shuffle": self.shuffler.state, "opt_t": t}
        return meta, arrays

    def restore(self, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        """Continue from `state()`'s values (a stopped run's optimiser step count stays its own)."""
        self.flat[:], self.best_flat[:] = arrays["flat"], arrays["best_flat"]
        for k, v in self._optimiser_state()[0].items():
            v[:] = arrays[f"opt.{k}"]
        if hasattr(self.opt, "t") and meta["stopped"] is None:
            self.opt.t = meta["opt_t"]
        self.rng.bit_generator.state = meta["rng"]
        self.shuffler.state = meta["shuffle"]
        self.epoch, self.step, self.best_epoch = meta["epoch"], meta["step"], meta["best_epoch"]
        self.since_best, self.best_loss, self.epochs, self.stopped = (meta["since_best"], meta["best_loss"],
                                                                       meta["epochs"], meta["stopped"])
        if self.stopped is not None:
            self.detached = ({k: np.array(arrays[f"opt.{k}"]) for k in self.opt.buffers()}, meta["opt_t"])
            self.flat = self.flat.copy()


def fit(runs: list[Run], features: Features, targets: np.ndarray, split: tuple[np.ndarray, np.ndarray], *,
        standardizer: tuple | None = None, callback=None, on_epoch=None, val: dict | None = None) -> None:
    """Train the runs' remaining epochs side by side on the samples split = (train_idx, val_idx); the validation
    rows never enter a batch (a fold whose rows weigh 0: a holdout). Every mini-batch is read once for all runs,
    its taps scaled once per tap scaling (`standardizer`: the taps' (mean, 1/std)) and dropped out with one draw;
    then each run takes its own step. Runs at one epoch share its shuffle (one seed, the same epochs before: each
    run ends exactly where it would alone); a run resumed at a later epoch waits until the others reach it.
    callback(epoch record) after each run's epoch, on_epoch(runs) after every shared epoch; `val`: the
    validation rows per tap scaling when the caller already has them."""
    cfg, (train_idx, val_idx) = runs[0].cfg, split
    obj = Objective(runs[0].layout.num_outputs, cfg.class_weights, runs[0].task, targets, train_idx)
    steps = math.ceil(len(train_idx) / cfg.batch_size)
    lrs = {e: [learning_rate(i, e * steps, cfg.lr, cfg.schedule, int(round(cfg.warmup_epochs * steps)))
               for i in range(e * steps)] for e in {run.cfg.epochs for run in runs}}   # once per epoch count
    view = _scaler({run.tap_scaling for run in runs}, standardizer)
    members: dict = {}   # each stack's runs in model order: a stack trains all its models (a stopped one, unread)
    for run in sorted(runs, key=lambda run: run.model):
        members.setdefault(id(run.stack), []).append(run)
    # train loss is monitored on a fixed sample of <= MONITOR rows: a full pass every epoch cost 10 % of training
    monitor = train_idx[::max(1, len(train_idx) // MONITOR)]
    train, val = (view(*features(monitor)), val or view(*features(val_idx)) if len(val_idx) else {}) \
        if features.static else ({}, val or {})
    while live := [run for run in runs if run.stopped is None]:
        cohort = [run for run in live if run.epoch == min(r.epoch for r in live)]
        t0, good, lead = time.perf_counter(), [run.flat.copy() for run in cohort], cohort[0]
        perm = train_idx[lead.shuffler.permutation(len(train_idx))]
        with np.errstate(over="ignore", invalid="ignore"):  # the guard in _end_epoch handles overflow
            losses = _epoch(cohort, features, view, perm, obj, lrs, members)
        seconds = (time.perf_counter() - t0) / len(cohort)
        for run, g, loss in zip(cohort, good, losses):
            run.shuffler.state, run.rng.bit_generator.state = lead.shuffler.state, lead.rng.bit_generator.state
            data = {"targets": targets, "val_idx": val_idx, "monitor": monitor, "lrs": lrs[run.cfg.epochs],
                    "train": train.get(run.tap_scaling), "val": val.get(run.tap_scaling),
                    "read": lambda idx, sc=run.tap_scaling: view(*features(idx))[sc]}
            rec = run._end_epoch(g, loss, seconds, obj, data)
            if callback and rec is not None:
                callback(rec)
        if on_epoch:
            on_epoch(runs)


def _scaler(scalings: set[str], standardizer: tuple | None):
    """(y0, t) -> {tap scaling: (y0, the taps so scaled)} for each of `scalings` (t itself for "none")."""
    def view(y0: np.ndarray, t: np.ndarray) -> dict:
        return {sc: (y0, t if sc == "none" else scaled(t, sc, standardizer)) for sc in scalings}
    return view


def side_by_side(specs: list[dict], epochs_done: list[int] = ()) -> list[Run]:
    """Runs of `specs` (each Run's keyword arguments), in order; runs that differ only in their tap scaling, and
    that a checkpoint left at the same epoch (epochs_done[i], 0 for a new run), are the models of one stack (a
    group each) with one optimiser. A batch's products are then batched over them, and each model's arithmetic
    is that of its run alone (each group its own matrix product: a stack of several weight decays or ranks
    side by side in one product would round differently)."""
    alike: dict = {}
    for i, spec in enumerate(specs):
        key = (spec["layout"], spec["scale"], spec["weight_decay"], spec["cfg"].epochs, spec.get("form", "skip"),
               id(spec.get("init_flat")), epochs_done[i] if i < len(epochs_done) else 0)
        alike.setdefault(key, []).append(i)
    runs: list = [None] * len(specs)
    for group in alike.values():
        one = {k: v for k, v in specs[group[0]].items() if k != "tap_scaling"}
        stack = Stack(one["layout"], len(group), 1, one["scale"], np.array([one["weight_decay"]], np.float32),
                      one["cfg"], one.get("init_flat"), one.get("form", "skip"))
        opt = from_config(one["cfg"], stack.flat.size, stack.decay if one.get("form") == "last" else one["weight_decay"])
        for g, i in enumerate(group):
            runs[i] = Run(**specs[i], shared=(stack, opt, g))
    return runs


def _epoch(cohort: list[Run], features: Features, view, perm: np.ndarray, obj: Objective, lrs: dict,
           members: dict) -> list[float]:
    """One pass of every run of the cohort over the rows `perm` in shared batches (members: each stack's runs, in
    model order); each run's mean batch loss when the rows are not cached (Skip-LoRA without a cache: a running
    mean costs nothing next to the backbone), else 0."""
    cfg, static, totals = cohort[0].cfg, features.static, {id(run): 0.0 for run in cohort}
    # per stack: its optimiser, all its runs, and one of the cohort's (whose step indexes the learning rates)
    stacks = {id(run.stack): (run.stack, run.opt, members[id(run.stack)], run) for run in cohort}.values()
    assert all(run.stopped or run in cohort for _, _, runs, _ in stacks for run in runs), "a stack trains in step"
    for i in range(0, len(perm), cfg.batch_size):
        idx = perm[i:i + cfg.batch_size]
        rows = view(*features(idx))
        if cfg.lora_dropout:   # one draw for every run (each run's generator would draw the same)
            t = next(iter(rows.values()))[1]
            mask = cohort[0].rng.random(t.shape, np.float32) < 1.0 - cfg.lora_dropout
            rows = {sc: (y0, lora.tap_dropout(t, cfg.lora_dropout, None, mask)) for sc, (y0, t) in rows.items()}
        for stack, opt, runs, lead in stacks:
            y0 = rows[lead.tap_scaling][0]
            t = np.stack([rows[run.tap_scaling][1] for run in runs]) if len(runs) > 1 else rows[lead.tap_scaling][1][None]
            y, h = stack.forward(y0, t)
            if not static:
                for run in runs:
                    totals[id(run)] = totals.get(id(run), 0.0) + obj.loss(y[run.model], idx) * len(idx)
            stack.backward(obj.grad(y, idx), h, t)
            if cfg.clip_norm:
                for run in runs:
                    clip_grad_norm(stack.model(stack.grad, run.model), cfg.clip_norm)
            opt.step(stack.flat, stack.grad, lrs[lead.cfg.epochs][lead.step])
        for run in cohort:
            run.step += 1
    return [totals[id(run)] / len(perm) for run in cohort]


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
