"""Skip-LoRA and Skip2-LoRA: edgelora.finetune as a user calls it, and where its time goes.

The timed run is the plain call; its time is History.cache_seconds + History.train_seconds (the brief's
definition), with the wall time of the whole call kept as `call_seconds`. The per-step split comes from a
second, instrumented run with the same settings: `instrumented()` wraps the functions the trainer calls
(lora.forward/backward, the loss gradient, the optimiser step, the backbone, the evaluations) with
clocks. Skip2-LoRA's 'backbone' is the timed run's own cache_seconds; the fractions the instrumented run
measures split the rest of the timed run's time (train_seconds for Skip2-LoRA); the clocks add about
0.5 us per wrapped call (a few % of a ~40 us step), which is why they are not in the timed run.
"""
from __future__ import annotations

import contextlib
import importlib
import time

import numpy as np

from edgelora import Backbone, Predictor, TrainConfig, finetune

from .config import BenchConfig
from .profile import peak_rss_mb


def train_config(cfg: BenchConfig, seed: int) -> TrainConfig:
    """`default`: edgelora's defaults as a user runs them (cross-validated recipe, the budget from the data:
    epochs "auto" unless the bench was given another count than its 30), with the bench's batch; `fixed`:
    the bench's shared recipe (rank, alpha, lr, decay, epochs, split) and no selection."""
    if cfg.skip_policy == "default":
        epochs = "auto" if cfg.epochs == BenchConfig.epochs else cfg.epochs
        return TrainConfig(epochs=epochs, batch_size=cfg.batch_size, val_fraction=cfg.val_fraction, seed=seed)
    return TrainConfig(r=cfg.rank, lora_alpha=cfg.alpha, epochs=cfg.epochs, batch_size=cfg.batch_size,
                       lr=cfg.lora_lr, weight_decay=cfg.lora_weight_decay, val_fraction=cfg.val_fraction,
                       form="skip", tap_scaling="none", cv_folds=0, seed=seed)


# (module, class or "", function, part): what the trainer calls, by the part of a step it belongs to. Entries a
# given edgelora version does not have are skipped, so the profile follows the core as it changes.
PATCHES = (("edgelora.core.lora", "", "forward", "forward"), ("edgelora.core.lora", "", "backward", "backward"),
           ("edgelora.core.stack", "Stack", "forward", "forward"), ("edgelora.core.stack", "Stack", "backward", "backward"),
           ("edgelora.core.loop", "", "cross_entropy_grad", "backward"), ("edgelora.core.loop", "", "loss_grad", "backward"),
           ("edgelora.core.loop", "", "cross_entropy", "eval"), ("edgelora.runtime.train", "", "cross_entropy", "eval"),
           ("edgelora.core.loop", "", "epoch_metrics", "eval"), ("edgelora.runtime.train", "", "evaluate_outputs", "eval"),
           ("edgelora.core.optim", "Adam", "step", "update"), ("edgelora.core.optim", "SGD", "step", "update"))


@contextlib.contextmanager
def instrumented(backbone: Backbone, batch_size: int):
    """Accumulate seconds per part of a finetune() call into the yielded dict (patches undone on exit)."""
    parts = {"backbone": 0.0, "forward": 0.0, "backward": 0.0, "update": 0.0, "eval": 0.0}
    pc = time.perf_counter

    def timed(fn, name):
        def wrapper(*args, **kwargs):
            t = pc()
            out = fn(*args, **kwargs)
            # lora.forward over more rows than a batch is one of the trainer's val/train-loss evaluations
            key = name if name != "forward" or len(args[1]) <= batch_size else "eval"
            parts[key] += pc() - t
            return out
        return wrapper

    undo = []
    for mod, cls, attr, part in PATCHES:
        owner = importlib.import_module(mod)
        owner = getattr(owner, cls, None) if cls else owner
        if owner is not None and hasattr(owner, attr):
            undo.append((owner, attr, getattr(owner, attr)))
            setattr(owner, attr, timed(getattr(owner, attr), part))
    backbone.features = timed(backbone.features, "backbone")
    try:
        yield parts
    finally:
        for owner, attr, fn in reversed(undo):
            setattr(owner, attr, fn)
        del backbone.features


def breakdown(history, parts: dict, cached: bool) -> dict:
    """Split of one finetune() call: 'backbone' is the cache fill (Skip2) or the per-step backbone (Skip)."""
    total = history.cache_seconds + history.train_seconds
    out = dict(parts)
    if cached:
        out["backbone"] = history.cache_seconds
    out["other"] = max(0.0, total - sum(out.values()))
    return out


def finetune_skip(method: str, backbone: Backbone, x, y, cfg: BenchConfig, seed: int, profile: bool = True):
    """Timed finetune() call (+ an instrumented replay); returns (adapter, record)."""
    cached = method == "skip2-lora"
    tc = train_config(cfg, seed)
    t = time.perf_counter()
    adapter, history = finetune(backbone, x, y, tc, use_cache=cached)
    call = time.perf_counter() - t
    seconds = history.cache_seconds + history.train_seconds
    epochs = [e["seconds"] for e in history.epochs]
    record = {"seconds": seconds, "call_seconds": call, "cache_seconds": history.cache_seconds,
              "train_seconds": history.train_seconds, "trainable_params": int(adapter.flat.size),
              "best_epoch": history.best_epoch, "samples": history.samples,
              "epoch_seconds": float(np.median(epochs[1:] if len(epochs) > 1 else epochs)),
              "steps": cfg.epochs * -(-history.samples["train"] // cfg.batch_size), "peak_rss_mb": peak_rss_mb()}
    if cached:
        record["cache_bytes"] = history.cache.get("bytes", 0)
    if history.selection:
        sel = history.selection
        record.update(cv_estimate=sel["chosen"]["score"], cv_no_finetune=sel["no_finetune"]["score"],
                      cv_helps=sel["helps"], chosen=history.chosen)
    if profile:
        t = time.perf_counter()
        with instrumented(backbone, cfg.batch_size) as parts:
            _, h2 = finetune(backbone, x, y, tc, use_cache=cached)
        record["profile_seconds"] = time.perf_counter() - t  # not part of the process time reported
        raw = breakdown(h2, parts, cached)
        record["profile_raw"] = raw
        # the timed run's own cache fill (Skip2), and the rest of its time split in the instrumented
        # run's proportions
        fixed = {"backbone": history.cache_seconds} if cached else {}
        rest = {k: v for k, v in raw.items() if k not in fixed}
        total, left = sum(rest.values()), seconds - sum(fixed.values())
        record["breakdown"] = {**fixed, **({k: left * v / total for k, v in rest.items()} if total else rest)}
    return adapter, record


def run(method: str, bundle: str, data: dict, cfg: BenchConfig, seed: int, profile: bool = True) -> dict:
    """One fine-tune + test evaluation, as reported by the worker."""
    backbone = Backbone(bundle, threads=1)
    adapter, record = finetune_skip(method, backbone, data["x_ft"], data["y_ft"], cfg, seed, profile)
    record["accuracy"] = Predictor(backbone, adapter).evaluate(data["x_te"], data["y_te"])["accuracy"]
    record["base_accuracy"] = Predictor(backbone).evaluate(data["x_te"], data["y_te"])["accuracy"]
    return record
