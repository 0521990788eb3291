"""Training deep adapters: LoRA on every weight layer of a chain (backprop.py), by backprop through the frozen
backbone, with the optimisers of optim.py and a seeded shuffle (one permutation of the training rows per
epoch). `fit` trains one model; `cross_validate` trains one per fold and scores each on the fold it never
saw at several epoch counts (folds and scores as in the skip recipes' cross-validation).

    x (N, ...) prepared inputs   A_i (fan_in, r), B_i (r, fan_out)   y = chain(x; W_i + s A_i B_i)
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .backprop import Engine, Stem, init_params
from .crossval import _scores as scores  # per-sample (score, loss): accuracy and cross-entropy, or -MSE and MSE
from .losses import class_groups, cross_entropy_grad
from .lora import split
from .optim import from_config, learning_rate

EVAL_BATCH = 32           # rows per forward pass when scoring (bounds the im2col buffers)
STEM_BYTES = 32 << 20     # the first layer's columns and frozen output are kept for every sample up to this size


def fold_ids(targets: np.ndarray, k: int, task: str) -> np.ndarray:
    """Fold id per sample: each class's samples, in sample order, cut into k contiguous blocks (the folds of
    the skip recipes' cross-validation)."""
    fold = np.zeros(len(targets), np.int64)
    for g in class_groups(targets, task):
        fold[g] = np.arange(len(g)) * k // len(g)
    return fold


def summary(score: np.ndarray, loss: np.ndarray, fold: np.ndarray) -> dict:
    """Mean score and loss, per-fold mean scores and their spread (standard deviation over folds)."""
    per = [float(score[fold == f].mean()) for f in np.unique(fold)]
    ok = bool(np.isfinite(score).all() and np.isfinite(loss).all())
    return {"score": float(score.mean()) if ok else -math.inf, "loss": float(loss.mean()) if ok else math.inf,
            "folds": per, "spread": float(np.std(per)) if ok else math.inf}


def engine(chain, r: int, scale: float) -> Engine:
    """LoRA (rank r, scale s) on every weight layer of `chain`, nothing else trained."""
    return Engine(chain, ["lora"] * chain.num_layers, r, scale)


def outputs(eng: Engine, p: dict, x: np.ndarray) -> np.ndarray:
    """The adapted network's outputs for prepared inputs, in chunks."""
    return np.concatenate([eng.forward(p, eng.prefix(x[a:a + EVAL_BATCH]), save=False)[0]
                           for a in range(0, len(x), EVAL_BATCH)])


def fit(eng: Engine, x: np.ndarray, targets: np.ndarray, cfg, *, epochs: int, weight_decay: float, task: str,
        idx: np.ndarray | None = None, on_epoch: Callable | None = None,
        state: dict | None = None, stem: Stem | None = None) -> np.ndarray:
    """Train a new deep adapter on rows `idx` of (x, targets) for `epochs`; returns its flat parameters.
    `on_epoch(epoch, flat, optimiser, rng)` after each epoch (scoring, checkpoints); `state` (a checkpoint's:
    flat, the optimiser's buffers, epoch, rng state) resumes, with the same result as an uninterrupted run.
    `stem`: eng.stem(x) when the caller has it (cross_validate: one for all folds); else made here if it fits
    STEM_BYTES."""
    idx = np.arange(len(targets)) if idx is None else idx
    stem = stem or eng.stem(x, STEM_BYTES)
    flat, shapes = init_params(eng.chain, eng.modes, eng.r, cfg.seed)
    grad = np.zeros_like(flat)
    p, g = split(flat, shapes), split(grad, shapes)
    opt = from_config(cfg, flat.size, weight_decay)
    rng, first = np.random.default_rng(cfg.seed), 1
    if state is not None:
        flat[:], first = state["flat"], state["epoch"] + 1
        for k, v in opt.buffers().items():
            v[...] = state[k]
        opt.t = state.get("opt_t", 0)  # Adam's step count (bias correction); SGD has none
        rng.bit_generator.state = state["rng"]
    cls = task == "classification"
    rows = np.eye(eng.chain.manifest.num_outputs, dtype=np.float32)[targets] if cls else targets.astype(np.float32)
    bs, steps = cfg.batch_size, math.ceil(len(idx) / cfg.batch_size)
    total = epochs * steps
    for epoch in range(first, epochs + 1):
        perm = idx[rng.permutation(len(idx))]
        for i in range(steps):
            b = perm[i * bs:(i + 1) * bs]
            out, saved = (eng.forward(p, None, first=stem.rows(b)) if stem is not None
                          else eng.forward(p, eng.prefix(x[b])))   # the ops before the first weight layer, the rest
            dy = cross_entropy_grad(out, rows[b]) if cls else (out - rows[b]) * (2.0 / out.size)
            eng.backward(dy.astype(np.float32), saved, p, g)
            step = (epoch - 1) * steps + i
            opt.step(flat, grad, learning_rate(step, total, cfg.lr, cfg.schedule,
                                               int(round(cfg.warmup_epochs * steps))))
        if not np.isfinite(flat).all():
            raise FloatingPointError(f"deep adapter training diverged at epoch {epoch}; lower `lr`")
        if on_epoch is not None:
            on_epoch(epoch, flat, opt, rng)
    return flat


def cross_validate(eng: Engine, x: np.ndarray, targets: np.ndarray, cfg, *, k: int, marks: list[int],
                   weight_decay: float, task: str, reach: float | None = None) -> dict[int, dict]:
    """Per epoch count in `marks`: the summary (score, loss, per-fold scores, spread) of k models, each
    trained without one fold and scored on it (fold_ids: contiguous blocks per class). `reach`: stop early
    once no mark can end with a mean score of at least it, even scoring best on every sample not yet scored
    (accuracy 1, -MSE 0); the summaries then cover the folds trained, with `folds_done` and `bound` (the
    best mean score the mark could still have reached)."""
    fold, stem = fold_ids(targets, k, task), eng.stem(x, STEM_BYTES)
    n, done = len(targets), np.zeros(len(targets), bool)
    score = {m: np.zeros(n) for m in marks}
    loss = {m: np.zeros(n) for m in marks}
    for f in range(k):
        held = np.flatnonzero(fold == f)
        if not len(held):
            continue
        def mark(epoch, flat, *_):
            if epoch in score:
                y = outputs(eng, split(flat, eng.shapes), x[held])
                score[epoch][held], loss[epoch][held] = scores(y, targets[held], task)
        fit(eng, x, targets, cfg, epochs=max(marks), weight_decay=weight_decay, task=task,
            idx=np.flatnonzero(fold != f), on_epoch=mark, stem=stem)
        done[held] = True
        top = float((~done).sum()) if task == "classification" else 0.0   # the rest at their best: 1 or 0 each
        bound = {m: (float(score[m][done].sum()) + top) / n for m in marks}
        if reach is not None and not done.all() and max(bound.values()) < reach:
            return {m: {**summary(score[m][done], loss[m][done], fold[done]), "folds_done": f + 1,
                        "bound": bound[m]} for m in marks}
    return {m: summary(score[m], loss[m], fold) for m in marks}
