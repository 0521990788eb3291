"""Fine-tuning orchestration: `finetune` turns samples into an adapter.

It checks the samples and reads them into the Skip-Cache (features.py), then chooses the candidate runs
(a holdout, or k-fold cross-validation: core/crossval.py), trains them side by side with the training loop
(core/loop.py), checkpoints them, keeps the best and builds the adapter (files/adapter.py). The settings,
the history and the train/validation split are in train_config.py; engine="onnx" hands the same features
to the ONNX training kit (onnx_trainer.py) instead.
"""
from __future__ import annotations

import math
import time
import uuid
import warnings
from dataclasses import replace
from typing import TYPE_CHECKING, Callable, Literal

import numpy as np

from ..core import crossval, lora, loop
from ..core.loop import Run
from ..core.metrics import evaluate_outputs
from ..files.adapter import Adapter, adapter_config, layout_for
from ..files.checkpoint import Pacer, check_same_run, load_checkpoint, save_checkpoint
from ..files.fileio import PathLike
from ..files.schema import to_dict
from . import cv_checkpoint, deep, deep_checkpoint, recalibrate, tap_choice
from .backbone import Backbone
from .cache import SkipCache
from .features import FeatureSource, prepare
from .plan import Plan, alpha, plan
from .request import check_request, run_key
from .train_config import History, TrainConfig

if TYPE_CHECKING:
    from ..graphs.kit import Kit

Split = tuple[np.ndarray, np.ndarray]  # (train_idx, val_idx)


def finetune(backbone: Backbone, x, y, config: TrainConfig = TrainConfig(), *, cache: SkipCache | None = None,
             init: Adapter | None = None, use_cache: bool = True, callback: Callable[[dict], None] | None = None,
             checkpoint_dir: PathLike | None = None, resume: bool = False,
             engine: Literal["numpy", "onnx"] = "numpy", kit: Kit | None = None,
             checkpoint_every: tuple[str, float] | None = None) -> tuple[Adapter, History]:
    """Train skip adapters on (x, y) over the frozen backbone; returns the adapter and its history.

    By default the recipe (adapter form, tap scaling, number of epochs, and any "auto" setting) is chosen by
    k-fold cross-validation on the cached rows (core/crossval.py) and then trained on every sample; the
    estimate is in History.selection. When no adapter is estimated better than none (`identity`), the identity
    adapter is returned (the backbone's own outputs, or `init` unchanged) and History.stopped is "identity".
    With `val_fraction` > 0 a holdout chooses instead and the best epoch is kept.

    With `use_cache` (Skip2-LoRA) the backbone runs once per sample not already in `cache`; without it
    (Skip-LoRA) the backbone runs on every mini-batch. `init` warm-starts from an existing adapter.
    With `checkpoint_dir` the state is saved atomically at the end of every run and in between as
    `checkpoint_every` says (files/checkpoint.parse_every; default: at most ~10 % of the time), and
    cross-validation's outcome as soon as it is known (cv_checkpoint.py); `resume` continues from it, without
    cross-validating again, and ends with the same adapter as an uninterrupted run.
    `engine="onnx"` trains one explicit recipe with the ONNX training kit (onnx_trainer.py; `kit`, built from
    `config` unless given), no numpy arithmetic on parameters: same adapter, within float rounding, as any
    onnxruntime client.
    """
    if init is not None and init.config.recalibration is not None and cache is None:
        backbone = backbone.recalibrated(init.config.recalibration)   # a warm start keeps its statistics
    check_request(backbone.manifest, config, init=init, use_cache=use_cache, checkpoint_dir=checkpoint_dir,
                   engine=engine, kit=kit)  # before any backbone work
    features, targets, split = prepare(backbone, x, y, config, cache=cache, use_cache=use_cache)
    return finetune_features(features, targets, split, config, init=init, callback=callback,
                             checkpoint_dir=checkpoint_dir, resume=resume, engine=engine, kit=kit,
                             checkpoint_every=checkpoint_every)


def finetune_features(features: FeatureSource, targets: np.ndarray, split: Split, config: TrainConfig, *,
                      init: Adapter | None = None, callback: Callable[[dict], None] | None = None,
                      checkpoint_dir: PathLike | None = None, resume: bool = False,
                      engine: Literal["numpy", "onnx"] = "numpy", kit: Kit | None = None,
                      checkpoint_every: tuple[str, float] | None = None, deep_tier: bool = True,
                      on_plan: Callable[[Plan], None] | None = None) -> tuple[Adapter, History]:
    """`finetune` on samples already checked and read (features.prepare, the CLI's own progress-reporting
    fill, a personalisation session's rows): their features, checked targets and split = (train_idx, val_idx).
    `deep_tier=False` keeps `form` "auto" among the skip forms (personalisation's versions warm-start them);
    on_plan(plan) once the runs are planned (plan.py), before the first epoch."""
    features = tap_choice.fixed(features, config, init)   # the view of the tap statistics read
    check_request(features.manifest, config, init=init, use_cache=features.static, checkpoint_dir=checkpoint_dir,
                   engine=engine, kit=kit)
    if engine == "onnx":
        return _train_kit(features, targets, split, config, kit=kit, callback=callback, on_plan=on_plan)
    features, picked, recal = _recalibrated(features, targets, config, init, split)
    features, picked, stats = tap_choice.choose(features, targets, config, init, picked,
                                                lambda f: plan(f, targets, config, split))
    # the deep tier re-estimates batch-norm itself (runtime/deep.py): not escalated from a re-calibrated backbone
    deep_tier = deep_tier and (features.backbone is None or features.backbone.recalibration is None)
    adapter, history = _train_numpy(features, targets, split, config, init=init, callback=callback,
                                    checkpoint_dir=checkpoint_dir, resume=resume, checkpoint_every=checkpoint_every,
                                    picked=picked, deep_tier=deep_tier, on_plan=on_plan)
    if recal and history.selection:
        history.selection = {**history.selection, "recalibration": recal}
    if stats and history.selection:
        history.selection = {**history.selection, "tap_statistics": stats}
    rc = features.backbone.recalibration if features.backbone is not None else None
    if rc is not None:   # chosen here, or the backbone given (a warm start's): the adapter carries it
        adapter.config = replace(adapter.config, recalibration=rc,
                                 training={**adapter.config.training, "recalibration": recal or {"chosen": rc.kind}})
    return adapter, history


def _train_kit(features: FeatureSource, targets: np.ndarray, split: Split, config: TrainConfig, *,
               kit: Kit | None, callback: Callable[[dict], None] | None,
               on_plan: Callable[[Plan], None] | None) -> tuple[Adapter, History]:
    """The kit trains what numpy's cross-validation chose among the recipes a kit can train (or the one given)."""
    from .onnx_trainer import kit_config, train_features  # the kit's graphs need onnx: loaded only when asked for
    config, start = kit_config(config, kit), time.perf_counter()
    found = plan(features, targets, config, split)
    if on_plan:
        on_plan(found)
    if not found.recipes:
        history = History(samples=found.rows, selection=found.selection, cache_seconds=features.seconds)
        return _identity(features, config, None, history, start)
    if found.selection:
        rc = found.recipes[0]
        config = replace(config, r=rc.r, weight_decay=rc.weight_decay, epochs=rc.epochs)
    adapter, history = train_features(features, targets, split, config, kit=kit, callback=callback)
    history.selection = found.selection
    adapter.config.training["cross_validation"] = crossval.brief(found.selection)
    history.train_seconds = time.perf_counter() - start   # the selection, then the kit
    return adapter, history


def _recalibrated(features: FeatureSource, targets: np.ndarray, config: TrainConfig,
                  init: Adapter | None, split: Split) -> tuple[FeatureSource, Plan | None, dict]:
    """The features over the backbone whose normalisation statistics (the lab's, or re-estimated on these
    samples: runtime/recalibrate.py) cross-validate best; its (recipes, selection), and what was compared.
    Equal accuracies go to the lower cross-validated loss, then to the simpler candidate (lab statistics first).
    Nothing to choose: the features as given."""
    b = features.backbone
    if init is not None or b is None or b.recalibration is not None:
        return features, None, {}     # a warm start is bound to its backbone; a re-calibrated one stays so
    kinds = recalibrate.kinds(b.lab_manifest, config.recalibrate)
    if kinds == ["none"] or (len(kinds) > 1 and not config.cross_validates):
        return features, None, {}     # choosing needs cross-validation
    best, scores, losses = None, {}, {}
    for kind, f in recalibrate.feature_candidates(features, config.recalibrate):
        if len(kinds) == 1:
            return f, None, {"chosen": kind}
        picked = plan(f, targets, config, split)
        scores[kind], losses[kind] = picked.selection["chosen"]["score"], picked.selection["chosen"]["loss"]
        if best is None or (scores[kind], -losses[kind]) > (scores[best[0]], -losses[best[0]]):
            best = (kind, f, picked)
    return best[1], best[2], {"chosen": best[0], "scores": scores, "losses": losses}


def _train_numpy(features: FeatureSource, targets: np.ndarray, split: Split, config: TrainConfig, *,
                 init: Adapter | None, callback: Callable[[dict], None] | None, checkpoint_dir: PathLike | None,
                 resume: bool, checkpoint_every: tuple[str, float] | None = None, picked: Plan | None = None,
                 deep_tier: bool = True, on_plan: Callable[[Plan], None] | None = None) -> tuple[Adapter, History]:
    """The numpy trainer, on a checked request: plan the candidate runs (plan.py), train them (core/loop.py),
    checkpoint them, keep the best and build the adapter."""
    if config.form == "deep" or config.form == "auto" and deep_checkpoint.resumes(checkpoint_dir, resume):  # LoRA inside
        # the backbone's layers, trained by backprop (deep.py); or an interrupted auto run's deep refit
        key = {} if checkpoint_dir is None else \
            run_key(features.manifest.identity, features.name, config, features.inputs, targets, None)
        return deep.finetune_deep(features, targets, split, config, checkpoint=(checkpoint_dir, resume, key))
    start = time.perf_counter()
    # hashing every input costs time (inside train_seconds): only a checkpoint needs the key
    key = "" if checkpoint_dir is None else \
        run_key(features.manifest.identity, features.name, config, features.inputs, targets, init)
    saved = load_checkpoint(checkpoint_dir) if checkpoint_dir is not None and resume else None
    if saved is not None:
        check_same_run(saved[0], key, checkpoint_dir)  # names what differs: data, settings, backbone, ...
    found = None if picked else cv_checkpoint.restored(saved)   # a resumed run's cross-validation, done
    runs_plan = picked or found or plan(features, targets, config, split, init)
    history = History(samples=runs_plan.rows, selection=runs_plan.selection, cache_seconds=features.seconds)
    if on_plan:
        on_plan(runs_plan)
    cv = cv_checkpoint.state(runs_plan) if checkpoint_dir is not None and not picked else None
    if cv is not None and found is None and saved is None:
        cv_checkpoint.save(checkpoint_dir, key, cv)
    if not runs_plan.recipes:   # cross-validation found no adapter better than none: the starting point, unchanged
        return _identity(features, config, init, history, start)
    store = None if checkpoint_dir is None else (checkpoint_dir, key, Pacer(checkpoint_every), cv)
    runs = _train_runs(features, targets, split, config, runs_plan, init, callback, store,
                       _resumable(saved, runs_plan))
    adapter = _adapter(features, targets, split, config, runs, runs_plan, history)
    history.train_seconds = time.perf_counter() - start
    if init is not None or not deep_tier:  # a warm start continues its skip adapter; a caller may want skip only
        return adapter, history
    return deep.escalate(features, targets, split, config, adapter, history,   # the deep tier, if needed
                         None if checkpoint_dir is None else (checkpoint_dir, False, key))


def _train_runs(features: FeatureSource, targets: np.ndarray, split: Split, config: TrainConfig, runs_plan: Plan,
                init: Adapter | None, callback, store: tuple | None, saved: tuple | None) -> list[Run]:
    """Every run of the plan, trained side by side over shared batches (loop.fit; continued from `saved`, a
    checkpoint of the same plan), checkpointed to store = (folder, run key, Pacer, cross-validation's outcome or
    None) as they go."""
    m, bias = features.manifest, init.config.bias if init is not None else config.bias
    states = saved[0]["runs"] if saved is not None else []
    runs = loop.side_by_side([dict(layout=layout_for(m, rc.r, bias), scale=alpha(rc.form, rc.r, config, init) / rc.r,
                                   weight_decay=rc.weight_decay, cfg=replace(config, epochs=rc.epochs), task=m.task,
                                   init_flat=None if init is None else init.flat, form=rc.form,
                                   tap_scaling=rc.tap_scaling) for rc in runs_plan.recipes],
                             [state["epoch"] for state in states])
    for i, state in enumerate(states):
        runs[i].restore(state, {k.split(".", 1)[1]: v for k, v in saved[1].items() if k.startswith(f"{i}.")})
    on_epoch = None if store is None else (lambda done: store[2](  # files.checkpoint.Pacer
        lambda: save_checkpoint(store[0], *_checkpoint(store[1], runs_plan, done, store[3])),
        finished=all(r.stopped is not None for r in done)))
    scaling = any(run.tap_scaling != "none" for run in runs)
    loop.fit(runs, features, targets, split, standardizer=features.standardizer if scaling else None,
             callback=callback, on_epoch=on_epoch)
    return runs


def _adapter(features: FeatureSource, targets: np.ndarray, split: Split, config: TrainConfig, runs: list[Run],
             runs_plan: Plan, history: History) -> Adapter:
    """The adapter of the best run (its tap standardisation folded in), with what History reports of it."""
    m, val_idx = features.manifest, split[1]
    best = _select(runs, config.select_tolerance)
    scaling = runs_plan.recipes[runs.index(best)].tap_scaling
    result = best.result.copy() if scaling == "none" else \
        lora.fold_standardizer(best.result, best.layout, best.scale, *features.standardizer)
    history.epochs, history.best_epoch, history.stopped = best.epochs, best.best_epoch, best.stopped
    history.chosen = {"form": best.form, "r": best.layout.r, "lora_alpha": best.scale * best.layout.r,
                      "weight_decay": best.weight_decay, "tap_scaling": scaling, "epochs": best.cfg.epochs}
    history.candidates = [run.summary() for run in runs] if len(runs) > 1 else []
    history.cache = features.cache.stats() if features.cache is not None else {}
    if len(val_idx):
        y0, t = features(val_idx)  # raw taps: also checks that the folded standardisation is exact
        out = lora.forward(lora.views(result, best.layout), y0, t, best.layout, best.scale)[0]
        history.val_metrics = evaluate_outputs(out, targets[val_idx], m.task)
    training = {"settings": to_dict(config), "chosen": history.chosen, "best_epoch": history.best_epoch,
                "stopped": history.stopped, "samples": history.samples, "val_metrics": history.val_metrics,
                "cross_validation": crossval.brief(history.selection)}
    config_out = adapter_config(m, best.layout.r, history.chosen["lora_alpha"], best.layout.bias, training)
    return Adapter(config_out, result)


def _resumable(saved: tuple | None, runs_plan: Plan) -> tuple | None:
    """The checkpoint's run states when it was written for this plan's runs; else None, with a warning (a plan
    chosen again, e.g. a cross-validation budget cut by time, may differ: its runs then start over)."""
    if saved is None or saved[0].get("plan", runs_plan.summary()["runs"]) == runs_plan.summary()["runs"]:
        return saved
    warnings.warn("--resume: the checkpoint's runs were planned differently from this run's (cross-validation "
                  "chose again); training them from the beginning")
    return None


def _identity(features: FeatureSource, config: TrainConfig, init: Adapter | None, history: History,
              start: float) -> tuple[Adapter, History]:
    """"No fine-tuning" as an adapter: the warm start as it is, else a new adapter (B = 0, bias 0) whose
    outputs are the backbone's own."""
    m = features.manifest
    history.stopped = "identity"
    history.chosen = {"form": crossval.IDENTITY, "epochs": 0}
    history.train_seconds = time.perf_counter() - start
    history.cache = features.cache.stats() if features.cache is not None else {}
    training = {"settings": to_dict(config), "chosen": history.chosen, "best_epoch": 0, "stopped": history.stopped,
                "samples": history.samples, "cross_validation": crossval.brief(history.selection)}
    if init is not None:
        c = init.config
        return Adapter(adapter_config(m, c.r, c.lora_alpha, c.bias, training), init.flat.copy()), history
    r = config.r if config.r != "auto" else config.rank_grid[0]
    layout = layout_for(m, r, config.bias)
    return Adapter(adapter_config(m, r, lora.default_alpha(r, config.lora_alpha), config.bias, training),
                   lora.init(layout, config.seed)), history


def _checkpoint(key: dict, runs_plan: Plan, runs: list[Run], cv: dict[str, np.ndarray] | None = None) -> tuple[dict, dict]:
    """Checkpoint contents: the plan's runs, the state of every run so far (finished ones and the current one),
    and cross-validation's outcome `cv` (cv_checkpoint.py). `session` names this fine-tune call, so the
    checkpoint only appends the epochs it has not yet seen."""
    session = runs[0].__dict__.setdefault("checkpoint_session", uuid.uuid4().hex)
    meta, arrays = {"run_key": key, "session": session, "plan": runs_plan.summary()["runs"], "runs": []}, dict(cv or {})
    for i, run in enumerate(runs):
        state, arr = run.state()
        meta["runs"].append(state)
        arrays.update({f"{i}.{k}": v for k, v in arr.items()})
    return meta, arrays


def _select(runs: list[Run], tolerance: float) -> Run:
    """The simplest run (smallest rank, then largest weight decay) whose validation loss is within
    `tolerance` of the best one. On shifted sensor data validation loss is near zero for every setting
    (the fan protocol: < 0.01 nats), so ties are common and the most regularised model generalises best."""
    def loss(run: Run) -> float:
        return run.best_loss if run.best_loss is not None else math.inf
    floor = min(loss(run) for run in runs)
    ties = [run for run in runs if loss(run) <= floor + tolerance]
    return min(ties, key=lambda run: (run.layout.r, -run.weight_decay))
