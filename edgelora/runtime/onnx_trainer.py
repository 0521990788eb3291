"""`finetune(..., engine="onnx")`: the training kit driven from Python with onnxruntime alone.

Every operation on parameters and optimiser state runs inside the kit's ONNX graphs; Python only feeds
cached rows, the epoch's permutation (shuffle.SplitMix64) and learning rates, and keeps the best epoch.
It is the reference for other clients (clients/js) and gives the numpy trainer's adapter (core/loop.py).
The samples come as train.py's do: checked and cached once (features.py), split by train_config.py.
"""
from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Callable

import numpy as np
import onnxruntime as ort

from ..core import lora
from ..core.budget import budget_epochs
from ..core.losses import class_weights
from ..core.loop import MONITOR
from ..core.metrics import evaluate_outputs
from ..core.optim import learning_rate
from ..core.shuffle import SplitMix64
from ..files.adapter import Adapter, adapter_config, layout_for
from ..files.bundle import Manifest
from ..files.schema import to_dict
from ..graphs.kit import Kit, KitRecipe, build_kit, check_backbone, kit_layout, recipe_of
from .features import FeatureSource
from .train_config import History, TrainConfig


def kit_config(config: TrainConfig, kit: Kit | None) -> TrainConfig:
    """`config` narrowed to what a kit trains: skip adapters on raw taps (an "auto" form or tap scaling becomes
    that), a given kit's rank. Cross-validation in numpy then chooses among those recipes (the rank if "auto",
    the weight decay, the epochs, or no fine-tuning) and the kit trains the one chosen."""
    narrowed = replace(config, form="skip" if config.form == "auto" else config.form,
                       tap_scaling="none" if config.tap_scaling == "auto" else config.tap_scaling)
    return narrowed if kit is None else replace(narrowed, r=recipe_of(kit).r)


def recipe_from_config(config: TrainConfig) -> KitRecipe:
    """The kit recipe of a TrainConfig (kit_config'd); "auto" settings are refused unless cross-validation
    chooses them (val_fraction 0, cv_folds >= 2), dropout always."""
    auto = [f for f in ("r", "weight_decay", "epochs") if getattr(config, f) == "auto"]
    if auto and not config.cross_validates:
        raise ValueError(f"engine='onnx' trains one recipe, chosen by cross-validation or given; found 'auto' for "
                         f"{auto} without cross-validation: pass explicit settings (e.g. r=4, weight_decay=0.1, "
                         f"epochs=30; on the command line --rank 4 --weight-decay 0.1 --epochs 30), keep "
                         f"cross-validation on, or use engine='numpy'")
    if config.form != "skip":
        raise ValueError(f"engine='onnx' trains skip adapters: expected form='skip', found {config.form!r}")
    if config.tap_scaling != "none":
        raise ValueError(f"engine='onnx' trains on raw taps: expected tap_scaling='none', found {config.tap_scaling!r}")
    if config.lora_dropout:
        raise ValueError(f"engine='onnx' has no tap dropout: expected lora_dropout=0, found {config.lora_dropout}")
    return KitRecipe(r=config.rank_grid[0] if config.r == "auto" else config.r, lora_alpha=config.lora_alpha, bias=config.bias, batch_size=config.batch_size,
                     optimizer=config.optimizer, momentum=config.momentum, clip_norm=config.clip_norm)


class KitSessions:
    """onnxruntime sessions over a kit's two graphs."""

    def __init__(self, kit: Kit, threads: int = 1):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.log_severity_level = 3
        try:
            self.train = ort.InferenceSession(kit.train_epoch, opts, providers=["CPUExecutionProvider"])
            self.evaluate = ort.InferenceSession(kit.evaluate, opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's own exception types
            raise ValueError(f"onnxruntime cannot load the training kit's graphs: {e}") from None
        self.cls = kit.contract["backbone"]["task"] == "classification"

    def run_eval(self, rows: np.ndarray, targets: np.ndarray, params: np.ndarray) -> tuple[np.ndarray, float]:
        outputs, loss = self.evaluate.run(None, {"rows": rows, "targets": targets, "params": params})
        return outputs, float(loss)


def _feed(rows: np.ndarray, targets: np.ndarray, config: TrainConfig, steps: int,
          classes: int) -> tuple[dict, np.ndarray]:
    """(the train graph's inputs every epoch shares, the learning rate of every step); `classes` 0: regression."""
    total = config.epochs * steps
    warmup = int(round(config.warmup_epochs * steps))
    lrs = np.array([learning_rate(i, total, config.lr, config.schedule, warmup) for i in range(total)], np.float64)
    feed = {"rows": rows, "targets": targets, "weight_decay": np.array(config.weight_decay, np.float64)}
    if classes:
        w = class_weights(config.class_weights, targets, classes)
        feed["class_weights"] = np.ones(classes, np.float32) if w is None else w
    return feed, lrs


def train_rows(kit: Kit, rows: np.ndarray, targets: np.ndarray, config: TrainConfig, *,
               val: tuple[np.ndarray, np.ndarray] | None = None, threads: int = 1,
               callback: Callable[[dict], None] | None = None) -> tuple[np.ndarray, dict]:
    """Train on cached rows [y0 | taps] with the kit: (flat parameters, outcome of the run: per-epoch records,
    best epoch, why it stopped, and the outputs of the kept parameters on `val`)."""
    contract, s = kit.contract, KitSessions(kit, threads)
    layout = kit_layout(kit)
    params = lora.init(layout, config.seed)
    state = {"params": params, "opt_m": np.zeros_like(params), "opt_v": np.zeros_like(params),
             "step": np.array(0, np.int64)}
    n, bs = len(rows), contract["recipe"]["batch_size"]
    steps = math.ceil(n / bs)
    config = replace(config, epochs=budget_epochs(config.epochs, config.min_steps, n, bs))
    feed, lrs = _feed(rows, targets, config, steps, layout.num_outputs if s.cls else 0)
    shuffler, monitor = SplitMix64(config.seed), np.arange(0, n, max(1, n // MONITOR))
    best, best_loss, best_epoch, since, stopped, records = params, None, 0, 0, None, []
    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        out = s.train.run(None, {**feed, **state, "perm": shuffler.permutation(n).astype(np.int64),
                                 "lr": lrs[(epoch - 1) * steps:epoch * steps]})
        if not out[4]:
            stopped = "non_finite"  # keep the last good parameters (end of the previous epoch)
            break
        state = dict(zip(("params", "opt_m", "opt_v", "step"), out[:4]))
        rec = {"epoch": epoch, "train_loss": s.run_eval(rows[monitor], targets[monitor], state["params"])[1],
               "lr": float(lrs[epoch * steps - 1]), "seconds": time.perf_counter() - t0}
        if val is not None:
            outputs, rec["val_loss"] = s.run_eval(val[0], val[1], state["params"])
            if s.cls:
                rec["val_accuracy"] = float((outputs.argmax(1) == val[1]).mean())
            if best_loss is None or rec["val_loss"] < best_loss:
                best, best_loss, best_epoch, since = state["params"], rec["val_loss"], epoch, 0
            else:
                since += 1
        else:
            best, best_epoch = state["params"], epoch
        records.append(rec)
        if callback:
            callback({**rec, "epochs": config.epochs, "r": layout.r, "weight_decay": config.weight_decay})
        if config.patience and since >= config.patience:
            stopped = "early_stopping"
            break
    outcome = {"epochs": records, "best_epoch": best_epoch, "stopped": stopped or "completed"}
    if val is not None:
        outcome["val_outputs"] = s.run_eval(val[0], val[1], best)[0]
    return best, outcome


def check_kit(m: Manifest, config: TrainConfig, kit: Kit | None) -> None:
    """Refuse, before any backbone work, a config the kit cannot train (recipe_from_config) or a `kit` built for
    another backbone."""
    recipe_from_config(kit_config(config, kit))
    if kit is not None:
        check_backbone(kit, m, "the training kit")


def train_features(features: FeatureSource, targets: np.ndarray, split: tuple[np.ndarray, np.ndarray],
                   config: TrainConfig, *, kit: Kit | None = None, callback: Callable[[dict], None] | None = None,
                   threads: int = 1) -> tuple[Adapter, History]:
    """`train.finetune_features(engine="onnx")` on a checked request (request.check_request): train with `kit`
    (built from `config` unless given) on the cached rows of split = (train_idx, val_idx)."""
    m, (train_idx, val_idx) = features.manifest, split
    if m.task == "classification":
        targets = targets.astype(np.int64, copy=False)   # the kit's `targets` input (labels may be narrower)
    kit = kit or build_kit(m, recipe_from_config(config))
    recipe = recipe_of(kit)
    history = History(samples={"train": int(len(train_idx)), "val": int(len(val_idx))},
                      cache_seconds=features.seconds)
    start = time.perf_counter()
    val = (features.rows(val_idx), targets[val_idx]) if len(val_idx) else None
    flat, run = train_rows(kit, features.rows(train_idx), targets[train_idx], config, val=val, threads=threads,
                           callback=callback)
    history.epochs, history.best_epoch, history.stopped = run["epochs"], run["best_epoch"], run["stopped"]
    history.chosen = {"form": "skip", "r": recipe.r, "lora_alpha": recipe.alpha, "weight_decay": config.weight_decay,
                      "tap_scaling": "none", "epochs": len(run["epochs"]) if run["stopped"] == "completed" else
                      budget_epochs(config.epochs, config.min_steps, len(train_idx), recipe.batch_size)}
    if val is not None:
        history.val_metrics = evaluate_outputs(run["val_outputs"], val[1], m.task)
    history.train_seconds = time.perf_counter() - start
    history.cache = features.cache.stats()
    training = {"settings": to_dict(config), "engine": "onnx", "chosen": history.chosen,
                "best_epoch": history.best_epoch, "stopped": history.stopped, "samples": history.samples,
                "val_metrics": history.val_metrics}
    assert layout_for(m, recipe.r, recipe.bias).size == flat.size
    return Adapter(adapter_config(m, recipe.r, recipe.alpha, recipe.bias, training), flat), history
