"""How time and memory grow with the number of fine-tune samples N and with the rank r.

N: the protocol's (first) fine-tune set at 25/50/100 % (random subsets) and 4x/16x (jittered copies,
see tasks.scaled_task), one process per (method, N), seed 0. The linearity check fits the cost of a
cached Skip2-LoRA epoch (the median of epochs 2..E, which include the per-epoch monitoring)
as a + b N. Rank: Skip2-LoRA and LoRA-All (numpy) at r in RANKS, alpha = 2 r (s = 2), 3 seeds in one
process each.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from .config import BenchConfig
from .launch import spawn
from .tasks import scaled_task, write_task

FACTORS = (0.25, 0.5, 1.0, 4.0, 16.0)
N_METHODS = ("skip2-lora", "skip-lora", "np-lora-all", "torch-ft-all")
RANKS = (1, 2, 4, 8, 16, 32)
RANK_METHODS = ("skip2-lora", "np-lora-all")


def linear_fit(n, y) -> dict:
    """Least squares y = a + b n; R^2 and the largest residual relative to the fitted value."""
    n, y = np.asarray(n, float), np.asarray(y, float)
    b, a = np.polyfit(n, y, 1)
    pred = a + b * n
    ss = float(((y - y.mean()) ** 2).sum())
    r2 = 1 - float(((y - pred) ** 2).sum()) / ss if ss else 1.0
    return {"intercept": float(a), "slope": float(b), "r2": r2,
            "max_rel_residual": float(np.max(np.abs(y - pred) / np.abs(pred)))}


def run(task: dict, out: Path, cfg: BenchConfig, factors=FACTORS, methods=N_METHODS, ranks=RANKS,
        rank_methods=RANK_METHODS, seeds=3, repeat=1, log=print) -> dict:
    """Scaling runs on one task dict (name, bundle, data); returns the 'scaling' section of results.json."""
    with np.load(task["data"], allow_pickle=False) as f:
        ft, te = (f["x_ft"], f["y_ft"]), (f["x_te"], f["y_te"])
    points = []
    for factor in factors:
        x, y = scaled_task(ft, factor)
        path = write_task(Path(out) / "data" / f"{task['name']}-x{factor:g}.npz", (x, y), te)
        for method in methods:
            spec = {"method": method, "seeds": [0], "tasks": [{"name": f"x{factor:g}", "bundle": task["bundle"],
                                                               "data": path}],
                    "config": cfg.to_dict(), "profile": False, "repeat": repeat}
            rep = spawn(spec, Path(out) / "specs")
            r = rep["runs"][0]
            points.append({"method": method, "factor": factor, "n": int(len(y)), "seconds": r["seconds"],
                           "epoch_seconds": r["epoch_seconds"], "cache_seconds": r.get("cache_seconds"),
                           "peak_rss_mb": rep["peak_rss_mb"], "accuracy": r["accuracy"]})
            log(f"  N={len(y):6d} {method:14s} {r['seconds']:8.3f} s  epoch {1e3 * r['epoch_seconds']:7.2f} ms  "
                f"peak RSS {rep['peak_rss_mb']:6.1f} MB")
    s2 = [p for p in points if p["method"] == "skip2-lora"]
    fit = linear_fit([p["n"] for p in s2], [p["epoch_seconds"] for p in s2]) if len(s2) >= 3 else None
    rank_points = []
    for r in ranks:
        rcfg = replace(cfg, rank=r, alpha=2.0 * r)
        for method in rank_methods:
            rep = spawn({"method": method, "seeds": list(range(seeds)), "tasks": [task], "config": rcfg.to_dict(),
                         "profile": False, "repeat": repeat}, Path(out) / "specs")
            runs = rep["runs"]
            rank_points.append({"method": method, "rank": r, "seconds": float(np.mean([q["seconds"] for q in runs])),
                                "accuracy": float(np.mean([q["accuracy"] for q in runs])),
                                "accuracy_std": float(np.std([q["accuracy"] for q in runs])),
                                "trainable_params": runs[0]["trainable_params"], "peak_rss_mb": rep["peak_rss_mb"]})
            log(f"  r={r:3d} {method:14s} {rank_points[-1]['seconds']:8.3f} s  acc "
                f"{100 * rank_points[-1]['accuracy']:.1f} %  params {runs[0]['trainable_params']}")
    return {"task": task["name"], "points": points, "fit": fit, "ranks": rank_points}


def markdown(scaling: dict) -> str:
    """Tables: time and peak RSS per (method, N); time, params and accuracy per (method, rank)."""
    ns = sorted({p["n"] for p in scaling["points"]})
    methods = list(dict.fromkeys(p["method"] for p in scaling["points"]))
    get = {(p["method"], p["n"]): p for p in scaling["points"]}
    lines = ["| method | " + " | ".join(f"N={n}" for n in ns) + " |", "|---|" + "---|" * len(ns)]
    for m in methods:
        cells = [f"{get[m, n]['seconds']:.3f} s, {get[m, n]['peak_rss_mb']:.0f} MB" if (m, n) in get else "-"
                 for n in ns]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if scaling["ranks"]:
        lines += ["", "| method | r | fine-tune s | trainable | accuracy % |", "|---|---|---|---|---|"]
        lines += [f"| {p['method']} | {p['rank']} | {p['seconds']:.3f} | {p['trainable_params']:,} | "
                  f"{100 * p['accuracy']:.1f} ± {100 * p['accuracy_std']:.1f} |" for p in scaling["ranks"]]
    return "\n".join(lines)
