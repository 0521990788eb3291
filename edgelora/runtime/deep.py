"""The deep tier: LoRA inside the backbone's own weight layers, trained by backprop through the frozen backbone
in numpy (core/deep_loop.py over graphs/onnx_chain.py), chosen when the skip adapters fall short.

Rule (`escalate`, form "auto" with cross-validation, at most AUTO_MAX_SAMPLES samples): the skip recipe
cross-validation chose scores S_cv (mean over folds; spread = standard deviation of the fold scores). The deep
tier is considered when S_cv is below the ceiling by more than the spread: the ceiling is 100 % accuracy
for classification, and for regression the skip adapter's own fit on the fine-tune samples (-MSE). Then
the deep tier is cross-validated on the same folds; once considered it wins unless the skip recipe scores
above it by more than one standard error: of the per-fold differences (paired, as the skip recipes' own
rule) or of the skip estimate (spread / sqrt(k)), whichever is smaller, and with the identity candidate
above no fine-tuning: the skip adapters fell short, and at 5-20 samples per class cross-validation under-rates
the deep tier (docs/deep.md). Its cross-validation stops once it can no longer reach that score. Larger sets
keep the skip adapter (the gaps it closes were measured at 20-45 samples and had closed at 100-135), and so
does a deep tier whose cross-validation and refit would take more than `deep_seconds` of CPU time, projected
from a few timed optimiser steps before any is paid (`projected_seconds`).
`form="deep"` trains the deep tier without the comparison; `form="skip"`/"last" never considers it.
"""
from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from ..core import deep_loop, lora
from ..core.lora import split
from ..core.selection import fold_count
from ..files.checkpoint import check_same_run, load_checkpoint
from ..files.deep_adapter import DeepAdapter, DeepConfig, torch_module
from ..files.recalibration import recalibrated
from ..files.schema import to_dict
from . import deep_checkpoint, recalibrate
from .deep_cost import check_memory, projected_seconds
from ..files.tap_stats import view
from .train_config import History, TrainConfig

MIN_STEPS = 100            # the deep budget's floor in optimiser steps (a few samples still get enough)
EPOCHS = 60                # the deep budget when `epochs` is "auto" (cross-validation picks 1/4, 1/2 or all of it)
MIN_RANK = 32              # the deep tier's rank is at least this (r 8 measured 0.5-7 points lower on the shifts)
WEIGHT_DECAY = 1e-2        # AdamW's usual default: the skip adapters' 1.0 would pull LoRA inside layers to 0
AUTO_MAX_SAMPLES = 256    # auto considers the deep tier on fine-tune sets up to this size
RECALIBRATE = "bn"        # batch-norm statistics re-estimated on the samples before training (docs/deep.md)
NEAR_BUDGET = 0.15        # a projection this close to deep_seconds (either side) is timing: another run may differ
NEAR_NOTE = (f"; the projection is within {NEAR_BUDGET:.0%} of the budget, so a run on a less busy CPU may decide "
             f"otherwise: a budget clear of it, or --form skip|deep, gives the same tier every run")
RULE = ("ceiling - skip cross-validated score > spread of its fold scores (ceiling: 100 % accuracy; regression: "
        f"the skip fit on the samples); at most {AUTO_MAX_SAMPLES} samples; projected CPU time within deep_seconds")


def settings(config: TrainConfig) -> dict:
    """Rank and alpha of the deep tier (the fine-tune's `r`, or the largest of `rank_grid`, at least MIN_RANK),
    its weight decay."""
    r = max(config.r if config.r != "auto" else max(config.rank_grid), MIN_RANK)
    return {"r": r, "lora_alpha": lora.default_alpha(r, config.lora_alpha), "weight_decay": WEIGHT_DECAY}


def budget(config: TrainConfig, n: int) -> int:
    """Epochs of the deep tier: config.epochs (EPOCHS when it is chosen automatically), raised so that they
    make at least MIN_STEPS optimiser steps."""
    steps = math.ceil(n / config.batch_size)
    return max(config.epochs if isinstance(config.epochs, int) else EPOCHS, math.ceil(MIN_STEPS / steps))


def recalibration_kind(manifest) -> str:
    """What the deep tier re-estimates on the device's samples before training: RECALIBRATE when the bundle
    records it (runtime/recalibrate.available), else nothing."""
    return RECALIBRATE if RECALIBRATE in recalibrate.available(manifest) else "none"


def load(features, estimate: bool = True):
    """(chain, prepared inputs, recalibration) of a fine-tune's samples: the chain computes the backbone with
    its normalisation statistics re-estimated on the samples (recalibration_kind; those of an already
    re-calibrated backbone as they are; `estimate` False: the lab's, enough to weigh its memory and time).
    ValueError when the backbone cannot be backpropagated."""
    from ..graphs.onnx_chain import load_chain  # onnx: loaded only when the deep tier is tried
    if features.cache is None:
        raise ValueError("the deep tier needs the samples' inputs through the Skip-Cache (use_cache=True)")
    if len(features.inputs) != 1:
        raise ValueError(f"the deep tier supports one input, found {sorted(features.inputs)}")
    backbone = features.cache.backbone
    rc = backbone.recalibration
    if estimate and estimates(features):
        rc = recalibrate.estimate(backbone, features.inputs, recalibration_kind(backbone.lab_manifest))
    rc = rc if rc is not None and not rc.empty else None
    chain = load_chain(backbone.bundle_dir, recalibrated(backbone.lab_manifest, rc))
    return chain, chain.prep(next(iter(features.inputs.values()))), rc


def estimates(features) -> bool:
    """Whether `load` re-estimates statistics on the samples (a bundle recording them, not re-calibrated yet)."""
    backbone = features.cache.backbone
    return backbone.recalibration is None and recalibration_kind(backbone.lab_manifest) != "none"


def finetune_deep(features, targets: np.ndarray, split_idx, config: TrainConfig, history: History | None = None,
                  found: dict | None = None, checkpoint: tuple | None = None) -> tuple[DeepAdapter, History]:
    """Train a deep adapter: epochs chosen by cross-validation (cv_folds >= 2, val_fraction 0) among
    epoch_fractions of the budget, then refit on every sample; or the budget on the training split.
    `found`: that cross-validation, already run (escalate). `checkpoint` = (folder, resume, run key): the
    refit is saved after every epoch (with the cross-validation's result); resuming continues it and ends
    with the same adapter as an uninterrupted run."""
    start = time.perf_counter()
    folder, resume, key = checkpoint or (None, False, {})
    saved = load_checkpoint(folder) if folder is not None and resume else None
    if saved is not None:
        check_same_run(saved[0], key, folder)
        found = saved[0]["runs"][0].get("found") or found
    history = history or History(samples={"train": int(len(split_idx[0])), "val": int(len(split_idx[1]))},
                                 cache_seconds=features.seconds)
    chain, x, rc = load(features)
    s, m = settings(config), chain.manifest
    eng = deep_loop.engine(chain, s["r"], s["lora_alpha"] / s["r"])
    check_memory(eng, x, config.batch_size, features.cache.memory_budget)
    epochs, (train_idx, val_idx) = budget(config, len(split_idx[0])), split_idx
    if found is None and config.cross_validates:
        found = cross_validate(eng, x, features, targets, config, s, epochs)
        history.selection = {**found, "deep": {"rule": "forced (form 'deep')", "considered": True, "won": True}}
    if found:
        epochs = found["chosen"]["epochs"]
        history.selection = history.selection or found   # a resumed auto run: the decision it checkpointed
    last = saved[0]["runs"][0] if saved is not None else {}   # epoch 0: only the decision was saved
    state = None if not last.get("epoch") else {**{k.split(".", 1)[1]: v for k, v in saved[1].items()},
                                                **{k: last[k] for k in ("epoch", "rng", "opt_t")}}
    save = None if folder is None else deep_checkpoint.saver(folder, key, found)
    flat = deep_loop.fit(eng, x, targets, config, epochs=epochs, weight_decay=s["weight_decay"], task=m.task,
                         idx=train_idx, on_epoch=save, state=state)
    adapter = _adapter(chain, eng, flat, s, rc)
    history.chosen = {"tier": "deep", "form": "deep", **s, "epochs": epochs,
                      "recalibration": rc.kind if rc is not None else "none"}
    history.epochs, history.best_epoch = [], 0
    if len(val_idx):
        from ..core.metrics import evaluate_outputs
        history.val_metrics = evaluate_outputs(deep_loop.outputs(eng, split(flat, eng.shapes), x[val_idx]),
                                               targets[val_idx], m.task)
    history.train_seconds += time.perf_counter() - start
    adapter.config = dataclasses.replace(adapter.config, training=_training(config, history))
    return adapter, history


def cv_rows(config: TrainConfig, manifest, n: int) -> tuple[np.ndarray, str, int]:
    """The rows the deep tier cross-validates on (all, or as the skip recipes' cross-validation an evenly
    spaced subset of at most cv_rows_per_class x outputs), how to say so, and k."""
    cap, idx, subset = config.cv_rows_per_class * manifest.num_outputs, np.arange(n), ""
    if cap and n > cap:
        idx = np.unique(np.linspace(0, n - 1, cap).astype(np.int64))
        subset = f" on {len(idx)} of {n} samples, evenly spaced in sample order"
    return idx, subset, fold_count(config.cv_folds, len(idx))


def cross_validate(eng, x, features, targets, config: TrainConfig, s: dict, epochs: int,
                   reach: float | None = None) -> dict:
    """The deep tier's k-fold estimate (History.selection's shape: method, chosen, no_finetune, helps,
    candidates) at each epoch mark; the mark chosen has the best score, then the lowest loss, then fewest epochs.
    `reach`: stop once the deep tier can no longer score that much (deep_loop.cross_validate); `folds_done`
    then says after how many folds."""
    idx, subset, k = cv_rows(config, eng.chain.manifest, len(targets))
    marks = sorted({max(1, int(round(f * epochs))) for f in config.epoch_fractions})
    task, start = eng.chain.manifest.task, time.perf_counter()
    table = deep_loop.cross_validate(eng, x[idx], targets[idx], config, k=k, marks=marks,
                                     weight_decay=s["weight_decay"], task=task, reach=reach)
    best = max(marks, key=lambda e: (table[e]["score"], -table[e]["loss"], -e))
    base = deep_loop.summary(*deep_loop.scores(features(idx)[0], targets[idx], task),
                             deep_loop.fold_ids(targets[idx], k, task))
    row = table[best]
    return {"method": f"{k}-fold cross-validation{subset}", "folds": k, "samples": len(idx),
            "metric": "accuracy" if task == "classification" else "neg_mse",
            "chosen": {"form": "deep", **s, "epochs": best, "score": row["score"], "score_spread": row["spread"],
                       "loss": row["loss"], "score_folds": row["folds"]},
            "no_finetune": {"score": base["score"], "score_spread": base["spread"], "loss": base["loss"],
                            "score_folds": base["folds"]},
            "helps": row["score"] > base["score"], "cv_seconds": time.perf_counter() - start,
            "folds_done": row.get("folds_done", k), "bound": max(r.get("bound", r["score"]) for r in table.values()),
            "candidates": [{"form": "deep", **s, "epochs": e, "score": table[e]["score"], "loss": table[e]["loss"]}
                           for e in marks]}


def escalate(features, targets: np.ndarray, split_idx, config: TrainConfig, adapter, history: History,
             checkpoint: tuple | None = None):
    """The auto tier rule (module docstring): (adapter, history) of the skip adapter or of the deep one;
    history.selection["deep"] says whether the deep tier was considered, both scores, the margin and its cost,
    and when it wins history.selection holds its estimate (the skip recipe's stays in "deep"). `checkpoint`
    (folder, resume, run key): the decision and the deep refit are checkpointed there (deep_checkpoint.py)."""
    sel = history.selection
    if config.form != "auto" or not sel or "chosen" not in sel or "deep" in sel:   # "deep": decided before an
        return adapter, history                                                    # interrupt, against the tier
    report = sel["deep"] = _consider(features, targets, adapter, sel["chosen"])  # history.chosen gets "tier"
    if not report["considered"]:                                                 # only when the deep tier wins
        return adapter, history
    start = time.perf_counter()
    found = _cross_validated(features, targets, config, report, sel["chosen"])
    report["seconds"] = time.perf_counter() - start
    history.train_seconds += report["seconds"]
    if found is None:   # unavailable (memory, CPU time, an op, divergence): not saved, checked again on resume
        return adapter, history
    won = report["won"]
    deep_checkpoint.keep_decision(checkpoint, sel, {**found, "deep": report} if won else None)
    if not won:
        return adapter, history
    history.selection = {**found, "deep": report}
    adapter, history = finetune_deep(features, targets, split_idx, config, history, {**found, "deep": report},
                                     checkpoint)
    report["seconds"] = time.perf_counter() - start   # the deep tier's whole cost: its cross-validation + refit
    return adapter, history


def _consider(features, targets: np.ndarray, adapter, chosen: dict) -> dict:
    """The rule's first half: whether the deep tier is a candidate after the skip recipe `chosen` (its report)."""
    cv, spread = chosen["score"], chosen["score_spread"]
    report = {"rule": RULE, "skip_score": cv, "skip_spread": spread, "considered": False, "won": False}
    if cv is None or spread is None or len(targets) > AUTO_MAX_SAMPLES:   # no finite skip estimate (every model
        return report     # diverged): nothing to compare with; a large set may live on disk: no row is read
    fit = _skip_fit(features, targets, adapter)
    ceiling = 1.0 if features.manifest.task == "classification" else fit
    report.update(skip_fit=fit, ceiling=ceiling, considered=bool(ceiling - cv > spread))
    return report


def _cross_validated(features, targets: np.ndarray, config: TrainConfig, report: dict, chosen: dict) -> dict | None:
    """The rule's second half: the deep tier's cross-validation (None, and why in `report`, when it cannot run:
    an op the numpy backward lacks, over the memory or CPU-time budget, or diverged), and whether it won."""
    s, epochs = settings(config), budget(config, len(targets))
    try:   # memory and time weighed before the statistics are re-estimated (forward passes over every sample)
        chain, x, _ = load(features, estimate=False)
        eng = deep_loop.engine(chain, s["r"], s["lora_alpha"] / s["r"])
        check_memory(eng, x, config.batch_size, features.cache.memory_budget)
        report["projected_seconds"] = projected = projected_seconds(eng, x, len(targets), config, epochs)
        report["near_budget"] = near = abs(projected - config.deep_seconds) <= NEAR_BUDGET * config.deep_seconds
        if projected > config.deep_seconds:
            raise ValueError(f"its cross-validation and refit would take about {projected:.0f} s of CPU time, more "
                             f"than deep_seconds {config.deep_seconds:g} s; --deep-budget {math.ceil(projected)} lets "
                             f"--form auto weigh it, --form deep trains it anyway" + (NEAR_NOTE if near else ""))
        if estimates(features):                # the chain again, over the statistics re-estimated
            del chain, x, eng                  # (not held twice meanwhile)
            chain, x, _ = load(features)
            eng = deep_loop.engine(chain, s["r"], s["lora_alpha"] / s["r"])
    except ValueError as e:
        report["unavailable"] = str(e)
        return None
    start, cv = time.perf_counter(), report["skip_score"]
    k = cv_rows(config, features.manifest, len(targets))[2]   # the folds cross_validate will use
    needed = -report["skip_spread"] / math.sqrt(k)   # the margin it needs: minus one standard error of the skip's
    try:   # stopped as soon as it can no longer win: the same decision, at a fraction of the cost
        found = cross_validate(eng, x, features, targets, config, s, epochs, reach=cv + needed)
    except FloatingPointError as e:   # the deep candidate diverged (e.g. a too large `lr`)
        report["unavailable"] = str(e)
        return None
    d = found["chosen"]
    needed = max(needed, -_paired_error(chosen.get("score_folds"), d["score_folds"]))
    # and, with the identity candidate, above the backbone alone: never an adapter its estimate finds worse
    above = not config.identity or d["score"] > found["no_finetune"]["score"]
    report.update(deep_score=d["score"], deep_spread=d["score_spread"], deep_epochs=d["epochs"],
                  margin=d["score"] - cv, needed=needed, won=bool(d["score"] >= cv + needed and above),
                  skip_chosen=chosen,
                  cv_seconds=time.perf_counter() - start, deep_folds=[found["folds_done"], k],
                  deep_bound=found["bound"] if math.isfinite(found["bound"]) else None)
    return found


def _paired_error(skip_folds, deep_folds) -> float:
    """One standard error of the per-fold differences between the skip recipe's and the deep tier's scores on
    the same folds (the skip recipes' paired rule); inf when they cannot be paired (a fold count differs: the
    deep cross-validation stopped early, or the skip's was repeated)."""
    if not skip_folds or len(skip_folds) != len(deep_folds) or None in skip_folds:
        return math.inf
    return float(np.std(np.subtract(skip_folds, deep_folds)) / math.sqrt(len(deep_folds)))


def _skip_fit(features, targets: np.ndarray, adapter) -> float:
    """The skip adapter's score (accuracy, or minus the MSE) on the fine-tune samples it was trained on."""
    lay, total = adapter.config.layout, 0.0
    for a in range(0, len(targets), 256):                 # in chunks: rows may be read from disk
        idx = np.arange(a, min(a + 256, len(targets)))
        y0, t = features(idx)
        y = lora.forward(lora.views(adapter.flat, lay), y0, t, lay, adapter.config.scale)[0]
        total += float(deep_loop.scores(y, targets[idx], features.manifest.task)[0].sum())
    return total / len(targets)


def _adapter(chain, eng, flat: np.ndarray, s: dict, rc) -> DeepAdapter:
    """The DeepAdapter of trained parameters (over the chain's statistics, re-calibrated by `rc` or the lab's):
    torch module names where the export recorded them."""
    p, m = split(flat, eng.shapes), chain.manifest
    inits = [n.initializer for n in chain.names]
    modules = [(torch_module(m, i).module if torch_module(m, i) is not None else i) for i in inits]
    # bound to the bundle, whichever tap statistics the skip adapters' view reads (files/tap_stats.py)
    config = DeepConfig(backbone_fingerprint=view(m, ()).identity, target_modules=tuple(modules), initializers=tuple(inits),
                        weight_shapes=tuple(tuple(int(d) for d in (w.T.shape if n.transposed else w.shape))
                                            for (w, _), n in zip(chain.weights, chain.names)),
                        num_outputs=m.num_outputs, task=m.task, r=s["r"], lora_alpha=float(s["lora_alpha"]),
                        classes=m.classes, recalibration=rc)
    params = {i: (p[f"A{j}"].copy(), p[f"B{j}"].copy()) for j, i in enumerate(inits)}
    return DeepAdapter.for_backbone(m, config, params)


def _training(config: TrainConfig, history: History) -> dict:
    return {"settings": to_dict(config), "chosen": history.chosen, "samples": history.samples,
            "val_metrics": history.val_metrics, "cross_validation": {
                k: v for k, v in history.selection.items() if k in ("method", "metric", "chosen", "no_finetune", "helps",
                                                                    "deep")}}
