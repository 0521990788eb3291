"""The text report of `edgelora finetune`: what was trained, what cross-validation expects, which tier won."""
from __future__ import annotations

from . import common

FORM_TEXT = {"skip": "skip adapters on every tap", "last": "last layer (dense, through its tap)",
             "deep": "deep: LoRA inside the backbone's layers"}


def report(r: dict) -> str:
    s, c, t, ch = r["samples"], r["cache"], r["seconds"], r["chosen"]
    lines = [f"Fine-tuned {s['train'] + s['val']} samples ({s['train']} train, {s['val']} validation) "
             f"over {r['bundle']}"]
    if r["val_before"] and r["val_after"]:
        lines.append(f"  {'validation':<10} {'before':>9}    {'after':>9}")
        for (label, b), (_, a) in zip(common.metric_rows(r["val_before"]), common.metric_rows(r["val_after"])):
            lines.append(f"  {label:<10} {b.strip():>9} -> {a.strip():>9}")
    elif r["cross_validation"]:
        lines += _cv_lines(r["cross_validation"], r["task"])
    else:
        lines.append(f"  no selection (--cv-folds 0); final train loss {r['train_loss']:.4f}")
    st = r["settings"]
    auto = " (auto)" if "auto" in (st["rank"], st["weight_decay"], st["form"], st["tap_scaling"]) else ""
    how = f"best epoch {r['best_epoch']} of {r['epochs_run']}" if r["val_after"] else f"{r['epochs_run']} epochs"
    taps = "" if ch["form"] == "deep" else f" taps {'standardised' if ch['tap_scaling'] == 'standard' else 'raw'}"
    how = f"{ch['epochs']} epochs" if ch["form"] == "deep" else how
    lines += [f"  chosen     {FORM_TEXT[ch['form']]} r={ch['r']} alpha={ch['lora_alpha']:g} "
              f"weight_decay={ch['weight_decay']:g}{taps}{auto}; {how} ({r['stopped']})",
              *_tier_lines((r["cross_validation"] or {}).get("deep"), r["task"]),
              f"  cache      {c['misses']} samples computed by the backbone, {c['hits']} already cached; "
              f"{c['rows']} rows, {common.human_bytes(c['bytes'])} {c['dtype']}"
              f"{' on disk' if c['on_disk'] else ' in RAM'}",
              f"  time       cache fill {t['cache_fill']:.3f} s, training {t['train']:.3f} s, total {t['total']:.2f} s",
              f"  saved      {r['adapter']}"]
    return "\n".join(lines)

def _pct(score: float, spread: float, task: str) -> str:
    """A cross-validated score as text: accuracy in %, or the MSE for regression (stored as -MSE)."""
    if score is None:
        return "n/a (every model diverged)"
    return f"{100 * score:.1f} ± {100 * spread:.1f} %" if task == "classification" else f"MSE {-score:.4g} ± {spread:.2g}"

def verdict(sel: dict, task: str) -> str:
    """One line: does fine-tuning help, by cross-validation."""
    what = "accuracy" if task == "classification" else "error"
    a, b = sel.get("adapter", sel["chosen"]), sel["no_finetune"]   # a deep tier's estimate has only "chosen"
    return (f"cross-validated {what} {_pct(a['score'], a['score_spread'], task)} fine-tuned vs "
            f"{_pct(b['score'], b['score_spread'], task)} without fine-tuning"
            + ("" if sel["helps"] else ": fine-tuning does not help on these samples"))


def _tier_lines(d: dict | None, task: str) -> list[str]:
    """Which tier won (skip adapters or deep LoRA), by how much, at what cost (runtime/deep.py's rule)."""
    if not d or "skip_fit" not in d:
        return []
    one = f"{100 * d['skip_fit']:.1f} %" if task == "classification" else f"MSE {-d['skip_fit']:.4g}"
    fit = f"skip fit {one} vs cross-validated {_pct(d['skip_score'], d['skip_spread'], task)}"
    if not d["considered"]:
        return [f"  tier       skip ({fit}; deep tier not tried: {d['rule']})"]
    if "unavailable" in d:
        return [f"  tier       skip ({fit}; deep tier unavailable: {d['unavailable']})"]
    won = "deep" if d["won"] else "skip"
    near = (f"; its projected {d['projected_seconds']:.0f} s is close to --deep-budget: a run on a busier CPU may "
            f"not weigh it" if d.get("near_budget") else "")
    done, k = d.get("deep_folds", (None, None))
    if done is not None and done < k:   # stopped once it could no longer win (runtime/deep.py)
        b = d.get("deep_bound")
        best = "-" if b is None else f"{100 * b:.1f} %" if task == "classification" else f"MSE {-b:.4g}"
        return [f"  tier       skip ({fit}; deep tier stopped after {done} of {k} folds: it could reach at most "
                f"{best}, needed at least {100 * d['needed']:+.1f} points from the skip estimate; deep tier cost "
                f"{d['seconds']:.2f} s{near})"]
    return [f"  tier       {won} ({fit}; deep cross-validated {_pct(d['deep_score'], d['deep_spread'], task)}, "
            f"margin {100 * d['margin']:+.1f} points, needed >= {100 * d['needed']:+.1f}; deep tier cost "
            f"{d['seconds']:.2f} s{near})"]


def _deep_min_steps() -> int:
    from ..runtime.deep import MIN_STEPS
    return MIN_STEPS


def _cv_lines(sel: dict, task: str) -> list[str]:
    lines = [f"  expected   {verdict(sel, task)}"]
    if task == "classification" and "adapter" in sel:   # the spread honestly: each sample counts once, however
        # many repeats scored it (a deep tier's estimate, runtime/deep.py, has no interval)
        (a0, a1), (b0, b1) = (v if None not in v else (0.0, 0.0) for v in
                              (sel["adapter"]["score_interval"], sel["no_finetune"]["score_interval"]))
        lines.append(f"             95 % interval {100 * a0:.1f}-{100 * a1:.1f} % fine-tuned, {100 * b0:.1f}-"
                     f"{100 * b1:.1f} % without, from {sel['samples']} samples")
    lines += [f"             ({sel['method']} over {len(sel['candidates'])} recipes, folds in sample order; each "
             f"fold's model scored on samples it never saw)"]
    b = sel.get("budget")
    if b is None:    # the deep tier's own budget (runtime/deep.budget)
        lines.append(f"  budget     {sel['chosen']['epochs']} epochs cross-validated (the deep tier: at least "
                     f"{_deep_min_steps()} optimiser steps)")
    elif b["stopped"] == "explicit":
        lines.append(f"  budget     {b['epochs']} epochs, as given (--epochs)")
    else:
        why = {"score": "no clear gain from more", "time": "the time budget stopped it while the score still "
               "improved", "cap": "the largest extension"}[b["stopped"]]
        lines.append(f"  budget     {b['epochs']} epochs cross-validated, from {b['start']} ({b['min_steps']} steps "
                     f"or more; {why})")
    if not sel["helps"]:
        lines.append("  warning    the adapter is saved anyway (--force-adapter, or no worse than the backbone); "
                     "--require-gain refuses to save one that does not help")
    return lines
