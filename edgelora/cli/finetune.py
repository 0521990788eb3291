"""`edgelora finetune`: train a Skip2-LoRA adapter on labelled samples and save it."""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from ..core.bookkeeping import compact_labels
from ..core.metrics import evaluate_outputs
from ..files.adapter import ADAPTER_KIND
from ..files.checkpoint import CHECKPOINT_KIND, load_checkpoint
from ..files.data import num_samples
from ..files.memory import cap_arenas
from ..runtime.cache import CACHE_DIR_KIND, SkipCache
from ..runtime.features import FeatureSource
from ..runtime.plan import Plan
from ..runtime.train import finetune_features
from ..runtime.train_config import TrainConfig, training_split
from . import common, flags
from .finetune_report import report, verdict
from .progress import Progress

EXAMPLE = """
edgelora finetune fan_bundle --data new_site.npz --out adapters/site7
edgelora finetune fan_bundle --data new_site.npz --out adapters/site7 --rank auto --weight-decay auto \\
    --cache-dir /var/cache/edgelora --cache-dtype float16 --json
"""
FILL_CHUNKS = 40  # the cache is filled in this many steps so the progress bar moves


def register(subparsers) -> None:
    d = TrainConfig()
    p = common.add_command(
        subparsers, "finetune", run, report,
        description="Fine-tune skip adapters over the frozen backbone of BUNDLE on labelled samples and save "
                    "them as a PEFT-style adapter folder. The backbone runs once per sample (Skip-Cache); every "
                    "epoch after that costs a few small matrix products, so the recipe (adapter form, tap "
                    "scaling, epochs) is chosen by cross-validation on the cached rows and then trained on "
                    "every sample; the report gives the cross-validated accuracy with and without the adapter.",
        example=EXAMPLE, epochs=True)
    p.set_defaults(targets=targets)
    p.add_argument("bundle", type=Path, metavar="BUNDLE", help="backbone bundle folder")
    p.add_argument("--out", required=True, type=Path, metavar="ADAPTER_DIR",
                   help="adapter folder to write (new, empty, or an adapter, which is replaced atomically)")
    common.add_overwrite(p, "--out (and --checkpoint-dir)")
    common.add_data_flags(p, labels=True, what="labelled training samples")
    t = p.add_argument_group("training")
    _recipe_flags(t, d)
    _selection_flags(t, d)
    _cache_flags(p.add_argument_group("cache and checkpoints"))


def _recipe_flags(t, d: TrainConfig) -> None:
    """The adapter and how it trains."""
    t.add_argument("--rank", dest="r", type=flags.rank, default=d.r, metavar="N|auto",
                   help=f"adapter rank r, or auto: pick from {list(d.rank_grid)} (default {d.r})")
    t.add_argument("--alpha", type=flags.positive_float, default=None, metavar="A",
                   help="LoRA alpha; the adapter output is scaled by alpha / r (default 2 r)")
    t.add_argument("--epochs", type=flags.rank, default=d.epochs, metavar="N|auto",
                   help="passes over the samples; auto: a budget from the data, at least --min-steps optimiser steps "
                        "(and 30 epochs), which cross-validation extends while its score still improves at the "
                        f"largest count, within --time-budget (default {d.epochs})")
    t.add_argument("--min-steps", type=flags.positive_int, default=d.min_steps, metavar="STEPS",
                   help=f"--epochs auto: train at least this many optimiser steps (default {d.min_steps})")
    t.add_argument("--time-budget", type=flags.positive_float, default=d.cv_seconds, metavar="SECONDS",
                   help="--epochs auto: cross-validation extends the budget only while its projected time stays "
                        f"within this (default {d.cv_seconds:g})")
    t.add_argument("--batch-size", type=flags.positive_int, default=d.batch_size, help=f"default {d.batch_size}")
    t.add_argument("--lr", type=flags.positive_float, default=d.lr, help=f"peak learning rate (default {d.lr})")
    t.add_argument("--optimizer", choices=("sgd", "adam", "adamw"), default=d.optimizer,
                   help=f"default {d.optimizer}")
    t.add_argument("--weight-decay", type=flags.decay, default=d.weight_decay, metavar="W|auto",
                   help=f"weight decay, or auto: pick from {list(d.weight_decay_grid)} (default {d.weight_decay})")
    t.add_argument("--form", choices=("skip", "last", "auto", "deep"), default=d.form,
                   help="skip: Skip-LoRA adapters on every tap; last: a dense update of the last layer through "
                        "its input tap (FT-Last on the cache); deep: LoRA inside the backbone's own layers, "
                        "backprop through it (docs/deep.md); auto: choose, deep only when the skip adapters "
                        f"fall short (default {d.form})")
    t.add_argument("--deep-budget", type=flags.positive_float, default=d.deep_seconds, metavar="SECONDS",
                   help="--form auto: try the deep tier only when its cross-validation and refit are projected to take "
                        f"at most this much CPU time (default {d.deep_seconds:g})")
    t.add_argument("--tap-scaling", choices=("none", "standard", "auto"), default=d.tap_scaling,
                   help="taps as cached, or each feature standardised over these samples (folded into the saved "
                        f"adapter); auto: choose (default {d.tap_scaling})")
    t.add_argument("--recalibrate", choices=("none", "auto", "input", "bn", "both"), default=d.recalibrate,
                   help="re-estimate the input standardisation and/or batch-norm statistics on these samples (one "
                        "forward pass, labels unused; docs/recalibration.md); auto: cross-validation chooses among "
                        f"the lab's and every kind the bundle allows (default {d.recalibrate})")
    t.add_argument("--tap-statistics", choices=("auto", "none", "std", "map", "all"), default=d.tap_statistics,
                   help="which statistics of its feature-map taps a bundle offers the adapter reads (docs/taps.md): "
                        f"none, one, all; auto: cross-validation chooses (default {d.tap_statistics})")


def _selection_flags(t, d: TrainConfig) -> None:
    """How the recipe is chosen and which trainer runs it."""
    t.add_argument("--cv-folds", type=flags.fold_count, default=d.cv_folds, metavar="K",
                   help="choose the auto settings and how many of --epochs to train by K-fold cross-validation "
                        "(folds: blocks in sample order within each class), then train on every sample; 0: no "
                        f"selection, train exactly the given settings (default {d.cv_folds})")
    t.add_argument("--cv-rows-per-class", type=flags.count, default=d.cv_rows_per_class, metavar="N",
                   help="cross-validate on at most N x classes samples, evenly spaced in sample order (the final "
                        f"training uses every sample); 0: all (default {d.cv_rows_per_class})")
    t.add_argument("--val-fraction", type=flags.fraction, default=d.val_fraction, metavar="F",
                   help="instead of cross-validation, hold out this share of each class's most recent samples, "
                        f"choose on it and restore the best epoch (default {d.val_fraction}: cross-validation)")
    t.add_argument("--require-gain", action="store_true",
                   help="save nothing (exit 1) unless cross-validation says the adapter beats the backbone "
                        "without fine-tuning (by default only an adapter estimated worse is refused)")
    t.add_argument("--force-adapter", action="store_true",
                   help="save the best adapter even when cross-validation estimates it worse than the backbone "
                        "alone (by default nothing is saved then, exit 1)")
    t.add_argument("--patience", type=flags.positive_int, default=None, metavar="EPOCHS",
                   help="stop after this many epochs without a better validation loss (default: never)")
    t.add_argument("--seed", type=int, default=d.seed, help=f"default {d.seed}")
    t.add_argument("--engine", choices=("numpy", "onnx"), default="numpy",
                   help="numpy (default), or onnx: the training kit's graphs on onnxruntime (as any onnxruntime "
                        "client trains; one explicit recipe: --rank N --weight-decay W --form skip --tap-scaling none)")


def _cache_flags(c) -> None:
    """Where the Skip-Cache and the checkpoints live."""
    c.add_argument("--cache-dir", type=Path, default=None, metavar="DIR",
                   help="keep the Skip-Cache on disk here, so later runs only compute new samples")
    c.add_argument("--cache-dtype", choices=("float32", "float16"), default="float32",
                   help="float16 halves the cache (default float32)")
    c.add_argument("--memory-budget", type=flags.positive_float, default=None, metavar="MB",
                   help="spill the cache to disk rather than hold more than this many MB in RAM; samples whose "
                        "bookkeeping (about 37 bytes each) needs more than half of it are refused")
    c.add_argument("--checkpoint-dir", type=Path, default=None, metavar="DIR",
                   help="save the training state here (for --resume): at the end of each run, and in between as "
                        "--checkpoint-every says")
    c.add_argument("--checkpoint-every", type=flags.interval, default=None, metavar="N|Ns|auto",
                   help="with --checkpoint-dir: save every N epochs, or at most every N seconds (30s); auto "
                        "(default): as often as costs at most about 10 %% of the run")
    c.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from the checkpoint in --checkpoint-dir")


def targets(args: argparse.Namespace) -> tuple[list, list]:
    """What this command writes, and what it reads (never to be replaced); see common.check_targets."""
    return ([("--out", args.out, ADAPTER_KIND), ("--checkpoint-dir", args.checkpoint_dir, CHECKPOINT_KIND),
             ("--cache-dir", args.cache_dir, CACHE_DIR_KIND)],
            [("input bundle", args.bundle), ("data file", args.data)])

def _check_resume(args: argparse.Namespace) -> None:
    """--resume needs --checkpoint-dir; a folder with no checkpoint in it starts afresh, saying so."""
    if args.resume and args.checkpoint_dir is None:
        raise ValueError("--resume needs --checkpoint-dir: the folder where the interrupted run saved its checkpoints")
    if args.resume and load_checkpoint(args.checkpoint_dir) is None:
        warnings.warn(f"--resume: {args.checkpoint_dir} holds no checkpoint (the run it continues stopped before its "
                      f"first epoch finished); starting from the beginning")


def run(args: argparse.Namespace) -> dict:
    _check_resume(args)
    config = _config(args)
    start = time.perf_counter()
    if args.memory_budget is not None:
        cap_arenas()   # before onnxruntime starts its threads: each arena would reserve 64 MB of address space
    backbone = common.open_backbone(args)
    m = backbone.manifest
    inputs, targets = common.load_data(args, m, labels=True)  # the one check of the samples
    targets = compact_labels(targets, m.task, m.num_outputs)
    split = training_split(m, targets, config)
    budget = None if args.memory_budget is None else max(1, int(args.memory_budget * 2**20))
    cache = SkipCache(backbone, args.cache_dir, dtype=args.cache_dtype, memory_budget=budget)
    cache.check_budget(inputs, targets)   # the per-sample bookkeeping fits the budget (core/bookkeeping.py)
    features = _fill(cache, inputs, not args.quiet)
    cache_stats = cache.stats()  # hits: samples cached by earlier runs; misses: computed now

    val_idx = split[1]
    val_before = evaluate_outputs(features(val_idx)[0], targets[val_idx], m.task) if len(val_idx) else None
    bar = Progress(1, "training", enabled=not args.quiet)   # sized by the plan, before the first epoch
    planned: list[Plan] = []

    def on_plan(plan: Plan) -> None:
        planned.append(plan)
        bar.resize(plan.epochs)
    adapter, history = finetune_features(features, targets, split, config, callback=_on_epoch(bar, args.verbose),
                                         checkpoint_dir=args.checkpoint_dir, resume=args.resume, engine=args.engine,
                                         checkpoint_every=args.checkpoint_every, on_plan=on_plan)
    bar.close()
    selection = history.selection
    if args.require_gain and selection and not selection["helps"]:
        raise common.CommandError(f"no adapter written (--require-gain): {verdict(selection, m.task)}")
    if history.stopped == "identity":
        raise common.CommandError(f"no adapter written: {verdict(selection, m.task)}; the backbone alone is "
                                  f"expected to do better, so keep serving it (--force-adapter saves the best "
                                  f"adapter anyway)")
    adapter.save(args.out)
    best = history.epochs[history.best_epoch - 1] if history.best_epoch else {}
    return {"adapter": str(args.out), "bundle": str(args.bundle), "task": m.task, "samples": history.samples,
            "chosen": history.chosen, "best_epoch": history.best_epoch, "epochs_run": len(history.epochs),
            "stopped": history.stopped, "val_before": val_before, "val_after": history.val_metrics or None,
            "train_loss": best.get("train_loss"), "candidates": history.candidates,
            "cross_validation": selection or None, "cache": cache_stats,
            "plan": planned[0].summary() if planned else None,
            "seconds": {"cache_fill": cache.fill_seconds, "train": history.train_seconds,
                        "total": time.perf_counter() - start},
            "settings": _settings(config, args), "history": history.epochs}


def _settings(config: TrainConfig, args: argparse.Namespace) -> dict:
    """The settings as the report shows them (the flags' names)."""
    return {"epochs": config.epochs, "batch_size": config.batch_size, "lr": config.lr, "optimizer": config.optimizer,
            "val_fraction": config.val_fraction, "seed": config.seed, "rank": config.r,
            "weight_decay": config.weight_decay, "form": config.form, "tap_scaling": config.tap_scaling,
            "min_steps": config.min_steps, "time_budget": config.cv_seconds, "deep_budget": config.deep_seconds,
            "force_adapter": args.force_adapter,
            "cv_folds": config.cv_folds, "cv_rows_per_class": config.cv_rows_per_class, "resumed": args.resume}

def _config(args: argparse.Namespace) -> TrainConfig:
    """The settings the flags ask for."""
    return TrainConfig(r=args.r, lora_alpha=args.alpha, epochs=args.epochs, batch_size=args.batch_size,
                       lr=args.lr, optimizer=args.optimizer, weight_decay=args.weight_decay,
                       val_fraction=args.val_fraction, patience=args.patience, seed=args.seed,
                       form=args.form, tap_scaling=args.tap_scaling, cv_folds=args.cv_folds,
                       cv_rows_per_class=args.cv_rows_per_class, min_steps=args.min_steps,
                       cv_seconds=args.time_budget, deep_seconds=args.deep_budget,
                       identity=not args.force_adapter,
                       recalibrate=args.recalibrate, tap_statistics=args.tap_statistics)


def _on_epoch(bar: Progress, verbose: bool):
    """The epoch callback: the progress bar (sized by the plan), or with --verbose and no terminal a line per epoch."""
    done = [0]

    def on_epoch(rec: dict) -> None:
        done[0] += 1
        val = f"val loss {rec['val_loss']:.4f}" if "val_loss" in rec else f"train loss {rec['train_loss']:.4f}"
        bar.update(done[0], f"r={rec['r']} wd={rec['weight_decay']:g} {val}")
        if verbose and not bar.active:
            print(f"epoch {rec['epoch']}/{rec['epochs']} r={rec['r']} wd={rec['weight_decay']:g} "
                  f"train loss {rec['train_loss']:.4f} {val}", file=sys.stderr)
    return on_epoch


def _fill(cache: SkipCache, inputs: dict, show: bool) -> FeatureSource:
    """The samples' features from the Skip-Cache, filled in chunks so a progress bar can follow the backbone."""
    n = num_samples(inputs)
    bar = Progress(n, "cache fill", enabled=show)
    features = FeatureSource.from_cache(cache, inputs, chunk=max(256, -(-n // FILL_CHUNKS)),
                                        progress=lambda done: bar.update(done, f"{cache.misses} computed, "
                                                                               f"{cache.hits} cached"))
    bar.close()
    return features
