"""Recipe selection by k-fold cross-validation on the Skip-Cache, every fold and recipe trained at once.

Cached epochs cost a few small matrix products, so instead of holding out scarce labels we train one model
per (recipe, fold) and score each fold's model on the samples it never saw. All models of one rank form a
*stack* (stack.py; the tap scalings are its input groups); all stacks share each mini-batch (one shuffle per
epoch), one loss gradient and one optimiser step, and a fold's model gives its own validation rows weight 0.
Folds are contiguous blocks in sample order within each class (the data is correlated in time), repeated
with moved cut points when they would be tiny (selection.py). Epoch counts are candidates for free: models
are scored at each mark, and while the largest mark still clearly wins the budget grows (budget.py). A large
set is cross-validated on an evenly spaced subset (`select`'s max_rows); the refit uses every sample.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np

from . import budget, lora
from .losses import class_weights, log_softmax, loss_grad
from .optim import from_config, learning_rate
from .selection import IDENTITY, choose, fold_count, held_out, improved, repeats_for, summarize
from .scaling import scaled
from .stack import Stack

FORMS = ("skip", "last")   # Skip-LoRA on every tap; a dense update of the last layer through its tap (lora.init_last)


class Rows(Protocol):
    """What `select` reads (a runtime/features.FeatureSource): (y0, taps) by index, len, the taps' (mean, 1/std)."""
    standardizer: tuple[np.ndarray, np.ndarray]
    def __call__(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...
    def __len__(self) -> int: ...


@dataclass(frozen=True)
class Recipe:
    """One candidate: the adapter's form, how taps are scaled, the weight decay, the rank and the epochs."""
    form: str
    tap_scaling: str
    weight_decay: float
    r: int
    epochs: int


def _scores(y: np.ndarray, targets: np.ndarray, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample (correct, loss) of outputs y (..., N, C): accuracy and cross-entropy, or -sq.err and mse."""
    y = y.astype(np.float64)
    if task != "classification":
        se = ((y - targets) ** 2).mean(axis=-1)
        return -se, se
    nll = -np.take_along_axis(log_softmax(y), np.broadcast_to(targets[:, None], y.shape[:-1] + (1,)), axis=-1)[..., 0]
    return (y.argmax(axis=-1) == targets).astype(np.float64), nll


def cross_validate(y0: np.ndarray, t_all: np.ndarray, targets: np.ndarray, *, scalings: list[str], layouts: dict,
                   alpha: dict, decays: list[float], marks: list[int], held: np.ndarray, cfg, task: str,
                   init_flat=None, time_limit: float | None = None):
    """Train every (form, rank, scaling, decay) on every fold of every repeat; score each at the epochs in `marks`.

    y0 (N, C); t_all (G, N, D): the taps under each of the G `scalings`; layouts and alpha keyed by (form, rank);
    held (S, N): slot s = r k + f holds out fold f of repeat r (selection.held_out). With `time_limit` (seconds)
    the budget grows past max(marks) while the best score still improves at the largest count (budget.extend).
    Returns (results, baseline, budget): results a list of {"recipe", "score": (R, N) per-sample score of each
    repeat's model that did not train on the sample, "loss": (R, N)}; baseline the same for the starting
    point (the backbone alone, or init_flat); budget {"marks", "stopped"}. The settings of `cfg` apply as in a
    single run (batch size, lr and schedule, optimiser, class weights, seed) except `clip_norm` and `lora_dropout`."""
    n, c = y0.shape
    slots, repeats = len(held), int(held[:, 0].sum())
    wds = np.repeat(np.asarray(decays, np.float32), slots)        # model j of a group: decay j // S, slot j % S
    stacks, flat, grads, decay = _stacks(layouts, alpha, len(scalings), wds, cfg, init_flat)
    base_y = y0 if init_flat is None else stacks[0][1].forward(y0, t_all[:, :, stacks[0][2]])[0][0]
    opt, rng = from_config(cfg, decay.size, decay), np.random.default_rng(cfg.seed)
    weights = None if task != "classification" else class_weights(cfg.class_weights, targets, c)
    own = np.tile(np.arange(slots), len(decays) * len(scalings))  # slot of each model
    keep = (~held[own]).astype(np.float32) * (1.0 if weights is None else weights[targets])  # (M, N) loss weights
    rows = np.eye(c, dtype=np.float32)[targets] if task == "classification" else targets.astype(np.float32)
    steps, marks = math.ceil(n / cfg.batch_size), sorted(marks)
    start = target = marks[-1]
    results, stopped, t0, epoch = [], "explicit" if time_limit is None else "", time.perf_counter(), 0
    while epoch < target:
        epoch += 1
        lrs = [learning_rate(i, start * steps, cfg.lr, cfg.schedule, int(round(cfg.warmup_epochs * steps)))
               for i in range((epoch - 1) * steps, epoch * steps)]
        _epoch(stacks, opt, (flat, grads), (y0, t_all, rows, keep), rng.permutation(n), lrs, cfg.batch_size, task)
        if epoch in marks:
            results += _score_mark(stacks, y0, t_all, targets, task, held, repeats, scalings, decays, epoch)
        if epoch == target and time_limit is not None:
            spent = time.perf_counter() - t0
            now = [res for res in results if res["recipe"].epochs == epoch]
            nxt, stopped = budget.extend(improved(now, [res for res in results if res["recipe"].epochs < epoch]),
                                         epoch, start, spent, spent / epoch, time_limit)
            if nxt is not None:
                marks.append(nxt)
                target = nxt
    sc, lo = _scores(base_y, targets, task)
    base = {"score": np.broadcast_to(sc, (repeats, n)), "loss": np.broadcast_to(lo, (repeats, n))}
    return results, base, {"marks": marks, "stopped": stopped}


def _stacks(layouts: dict, alpha: dict, groups: int, wds: np.ndarray, cfg, init_flat):
    """([(key, Stack, columns of the taps it reads)], flat parameters, gradients, weight decays): one stack per
    (form, rank), all in one flat buffer so one optimiser call per step updates all of them. wds (Mg,): model j
    of a group has decay wds[j]."""
    # the last-layer form trains only its tap (the others' A and B stay 0): its stack reads just that tap's columns
    used = {(form, r): (lora.Layout(lay.taps[-1:], lay.widths[-1:], lay.num_outputs, r, lay.bias),
                        slice(lay.bounds[-1][0], None)) if form == "last" else (lay, slice(None))
            for (form, r), lay in layouts.items()}
    sizes = [sum(int(np.prod(s)) for s in Stack.layout_shapes(lay, groups, len(wds)).values())
             for lay, _ in used.values()]
    flat, grads, decay = (np.zeros(sum(sizes), np.float32) for _ in range(3))
    ends = np.cumsum([0] + sizes)
    stacks = [(key, Stack(lay, groups, len(wds), alpha[key] / key[1], wds, cfg, init_flat, key[0],
                          (flat[a:b], grads[a:b], decay[a:b])), cols)
              for (key, (lay, cols)), a, b in zip(used.items(), ends[:-1], ends[1:])]
    return stacks, flat, grads, decay


def _epoch(stacks: list, opt, buffers: tuple, data: tuple, perm: np.ndarray, lrs: list[float], bs: int,
           task: str) -> None:
    """One epoch of every model of every stack over the rows in the order `perm`: each batch one forward per
    stack, one loss gradient for all (losses.loss_grad), one backward per stack and one optimiser step.
    data = (y0 (N, C), taps (G, N, D), rows (N, C) one-hot or targets, keep (M, N) each model's loss weights)."""
    (flat, grads), (y0, t_all, rows, keep), n = buffers, data, len(perm)
    # one gather per epoch, then every batch is a slice: (M, N) loss weights summing to 1 per model and batch;
    # the taps are gathered per batch (a copy of all of them in epoch order was the fine-tune's peak memory)
    starts = np.arange(0, n, bs)
    w = keep[:, perm]
    w /= np.repeat(np.maximum(np.add.reduceat(w, starts, axis=1), 1e-12), np.diff(np.append(starts, n)), axis=1)
    y0p, rp = y0[perm], rows[perm]
    shift = np.maximum.reduce(y0p, axis=1, keepdims=True)          # each sample's largest backbone logit
    for i, lr in enumerate(lrs):
        s = slice(i * bs, (i + 1) * bs)
        tb = np.take(t_all, perm[s], axis=1)                             # (G, b, D): this batch's taps
        ts = [tb[:, :, cols] for _, _, cols in stacks]
        y = np.empty((len(stacks), len(w), len(rp[s]), y0.shape[1]), np.float32)    # every stack's outputs
        hs = [stack.forward(y0p[s], t, out)[1] for (_, stack, _), t, out in zip(stacks, ts, y)]
        loss_grad(y, rp[s], w[:, s, None], task, shift[s])               # one loss gradient for all stacks
        for (_, stack, _), g, h, t in zip(stacks, y, hs, ts):
            stack.backward(g, h, t)
        opt.step(flat, grads, lr)


def _score_mark(stacks, y0, t_all, targets, task, held, repeats, scalings, decays, epoch) -> list[dict]:
    """Every recipe's (R, N) held-out scores and losses at this epoch: each sample scored, in each repeat,
    by the model that did not train on it."""
    found, slots = [], len(held)
    k = slots // repeats
    for (form, r), stack, cols in stacks:
        y, _ = stack.forward(y0, t_all[:, :, cols])      # (M, N, C): every model on every sample
        score, loss = _scores(y, targets, task)
        bad = ~np.isfinite(y).all(axis=(1, 2))          # a diverged model never wins
        score[bad], loss[bad] = -np.inf, np.inf
        for j, (sc, wd) in enumerate((sc, wd) for sc in scalings for wd in decays):
            block = slice(j * slots, (j + 1) * slots)
            s = np.where(held, score[block], 0.0).reshape(repeats, k, -1).sum(axis=1)
            lo = np.where(held, loss[block], 0.0).reshape(repeats, k, -1).sum(axis=1)
            found.append({"recipe": Recipe(form, sc, float(wd), r, epoch), "score": s, "loss": lo})
    return found


def select(features: Rows, targets: np.ndarray, *, scalings: list[str], layouts: dict, alphas: dict, decays: list[float],
           config, task: str, init_flat: np.ndarray | None = None, max_rows: int | None = None,
           rule: str = "paired") -> tuple[Recipe | None, dict]:
    """Choose by k-fold cross-validation on the cached rows (`features`): the recipe to refit, or None when
    "no fine-tuning" (the backbone alone, or init_flat) wins (config.identity), and what was found
    (History.selection). max_rows: cross-validate on at most this many rows, evenly spaced in sample order."""
    everything, subset = np.arange(n := len(features)), ""
    if max_rows is not None and n > max(max_rows, 2 * config.cv_folds):
        everything = np.unique(np.linspace(0, n - 1, max(max_rows, 2 * config.cv_folds)).astype(np.int64))
        subset = f" on {len(everything)} of {n} samples, evenly spaced in sample order"
        targets, n = targets[everything], len(everything)
    k = fold_count(config.cv_folds, n)
    if k < 2:
        raise ValueError(f"cross-validation needs at least {2 * config.cv_folds} samples, found {n}; pass explicit "
                         f"settings with `cv_folds`=0 (CLI: --cv-folds 0)")
    y0, taps = _scaled_taps(features, everything, scalings)
    repeats = repeats_for(n, config.cv_repeats)
    held = held_out(targets, k, task, repeats)
    start = budget.budget_epochs(config.epochs, config.min_steps, n, config.batch_size)
    marks = sorted({max(1, int(round(f * start))) for f in config.epoch_fractions})
    extendable = config.epochs == "auto" and config.schedule == "constant"
    with np.errstate(over="ignore", invalid="ignore"):   # a diverging model is scored -inf, never chosen
        results, base, spent = cross_validate(y0, taps, targets, scalings=scalings, layouts=layouts, alpha=alphas,
                                              decays=decays, marks=marks, held=held, cfg=config, task=task,
                                              init_flat=init_flat, time_limit=config.cv_seconds if extendable else None)
    cls = task == "classification"
    table = [{"recipe": res["recipe"], **summarize(res["score"], res["loss"], held, cls)} for res in results]
    baseline = summarize(base["score"], base["loss"], held, cls)
    best, identity = choose(table, baseline if config.identity else None, rule)
    adapter, none = _estimate(best, asdict(best["recipe"])), _estimate(baseline, {})
    return None if identity else best["recipe"], {
        "method": f"{k}-fold cross-validation" + (f" ({repeats} repeats)" if repeats > 1 else "") + subset,
        "folds": k, "repeats": repeats, "samples": n, "metric": "accuracy" if cls else "neg_mse",
        "chosen": {**none, "form": IDENTITY} if identity else adapter, "adapter": adapter, "no_finetune": none,
        "helps": bool(best["score"] > baseline["score"]),
        "budget": {"epochs": max(spent["marks"]), "start": start, "marks": spent["marks"], "stopped": spent["stopped"],
                   "min_steps": config.min_steps, "seconds_limit": config.cv_seconds},
        "candidates": [{**asdict(row["recipe"]), "score": row["score"], "loss": row["loss"]} for row in table]}


def _scaled_taps(features: Rows, idx: np.ndarray, scalings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(y0, taps (G, N, D)): the rows idx with their taps under each of the G tap scalings."""
    y0, t = features(idx)                                        # a copy: the rows of idx
    if scalings == ["none"]:
        return y0, np.ascontiguousarray(t, np.float32)[None]     # (1, N, D) without another copy
    taps = np.empty((len(scalings),) + t.shape, np.float32)      # (G, N, D), each group scaled in place
    for g, sc in enumerate(scalings):
        scaled(t, sc, features.standardizer if sc != "none" else None, out=taps[g])
    return y0, taps


def _estimate(row: dict, recipe: dict) -> dict:
    """A candidate's estimate as History.selection reports it (None where every model diverged: JSON has no inf)."""
    def num(v):
        return v if math.isfinite(v) else None
    return {**recipe, "score": num(row["score"]), "score_spread": num(row["spread"]),
            "score_interval": [num(v) for v in row["interval"]], "loss": num(row["loss"]),
            "score_folds": [num(v) for v in row["folds"]]}


def brief(selection: dict) -> dict:
    """What the adapter file keeps of the selection: the estimate, not the whole table."""
    keys = ("method", "metric", "samples", "chosen", "adapter", "no_finetune", "helps", "budget")
    return {key: selection[key] for key in keys if key in selection} if selection else {}
