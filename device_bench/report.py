"""Aggregate worker results per method, check the targets, render the text and markdown tables."""
from __future__ import annotations

import numpy as np

from .config import METHODS, SKIP2, TARGETS

PARTS = ("backbone", "forward", "backward", "update", "eval", "other")


def aggregate(processes: list[dict]) -> dict:
    """Per method: accuracy and time mean/std over seeds (each seed = mean over the protocol's tasks)."""
    by = {}
    for proc in processes:
        by.setdefault(proc["method"], []).append(proc)
    out = {}
    for method, procs in by.items():
        seeds = {}
        for proc in procs:
            for run in proc["runs"]:
                seeds.setdefault(run["seed"], []).append(run)
        acc = [np.mean([r["accuracy"] for r in rs]) for rs in seeds.values()]
        sec = [np.mean([r["seconds"] for r in rs]) for rs in seeds.values()]
        runs = [r for rs in seeds.values() for r in rs]
        parts = {p: float(np.mean([r.get("breakdown", {}).get(p, 0.0) for r in runs])) for p in PARTS}
        name, engine, trains = METHODS[method]
        out[method] = {
            "name": name, "engine": engine, "trains": trains, "seeds": len(seeds), "tasks": len(runs) // len(seeds),
            "accuracy_mean": float(np.mean(acc)), "accuracy_std": float(np.std(acc)),
            "accuracy_per_seed": [float(a) for a in acc],
            "seconds_mean": float(np.mean(sec)), "seconds_std": float(np.std(sec)),
            "seconds_per_seed": [float(s) for s in sec], "breakdown": parts,
            "cold_seconds_mean": float(np.mean([r.get("cold_seconds", r["seconds"]) for r in runs])),
            "epoch_seconds": float(np.mean([r["epoch_seconds"] for r in runs])),
            "steps": int(np.mean([r["steps"] for r in runs])),
            "trainable_params": int(np.mean([r["trainable_params"] for r in runs])),
            "peak_rss_mb": float(max(p["peak_rss_mb"] for p in procs)),
            "finetune_peak_rss_mb": float(max(r["peak_rss_mb"] for r in runs)),
            "rss_after_imports_mb": float(np.mean([p["rss_after_imports_mb"] for p in procs])),
            "import_seconds": float(np.mean([p["import_seconds"] for p in procs])),
            # wall time of the worker process (interpreter start, imports, data, fine-tune(s), test evaluation),
            # without the instrumented Skip-LoRA replays
            "process_seconds": float(np.mean([p["process_seconds"] - sum(r.get("profile_seconds", 0.0)
                                                                          for r in p["runs"]) for p in procs])),
        }
        if all("base_accuracy" in r for r in runs):
            # harm: a task (user, fold) whose fine-tuned model is below the same backbone without fine-tuning
            harmed = [r for r in runs if r["accuracy"] < r["base_accuracy"]]
            out[method]["harm_rate"] = len(harmed) / len(runs)
            out[method]["harmed"] = sorted({r["task"] for r in harmed})
        if all("cv_estimate" in r for r in runs):
            out[method]["cv_estimate_mean"] = float(np.mean([r["cv_estimate"] for r in runs]))
            out[method]["cv_gap_points"] = float(np.mean([100 * abs(r["cv_estimate"] - r["accuracy"]) for r in runs]))
            out[method]["cv_flagged"] = sorted({r["task"] for r in runs if not r["cv_helps"]})
            out[method]["chosen"] = [{"seed": r["seed"], "task": r["task"], **r["chosen"]} for r in runs]
        if method in ("skip-lora", "skip2-lora"):
            out[method]["call_seconds"] = float(np.mean([r["call_seconds"] for r in runs]))
            out[method]["cache_seconds"] = float(np.mean([r["cache_seconds"] for r in runs]))
            out[method]["profile_raw"] = {p: float(np.mean([r.get("profile_raw", {}).get(p, 0.0) for r in runs]))
                                          for p in PARTS}
    return out


def targets(results: dict) -> list[dict]:
    """PASS/MISS of each target (config.TARGETS) that this run can judge (ratios from this run's means)."""
    m, protocol = results["methods"], results["protocol"]
    s2 = m.get(SKIP2)
    out = []

    def add(tid, value, ok, detail):
        text, threshold = next((t, th) for i, t, th in TARGETS if i == tid)
        out.append({"id": tid, "text": text, "threshold": threshold, "value": value, "pass": bool(ok),
                    "detail": detail})
    if s2:
        for tid, other in (("skip2_vs_torch_ft_all", "torch-ft-all"), ("skip2_vs_torch_lora_all", "torch-lora-all")):
            if other in m:
                ratio = s2["seconds_mean"] / m[other]["seconds_mean"]
                add(tid, ratio, ratio <= 0.05, f"{s2['seconds_mean']:.4f} s / {m[other]['seconds_mean']:.4f} s "
                                                f"= {ratio:.3f} x")
        if "torch-ft-all" in m:
            ratio = s2["seconds_mean"] / m["torch-ft-all"]["seconds_mean"]
            limit = 0.25 if results.get("arch", "mlp") == "mlp" else 0.1
            add("default_vs_torch_ft_all", ratio, ratio <= limit,
                f"{ratio:.3f} x (target {limit} x for {results.get('arch', 'mlp')})")
        if "harm_rate" in s2:
            add("skip2_harm", s2["harm_rate"], s2["harm_rate"] <= 1 / 9 + 1e-9,
                f"{100 * s2['harm_rate']:.0f} % of (seed, task) runs below no fine-tuning"
                + (f": {', '.join(s2['harmed'])}" if s2["harmed"] else "")
                + (f"; cross-validation flagged {', '.join(s2['cv_flagged'])}" if s2.get("cv_flagged") else ""))
        if "cv_gap_points" in s2:
            add("cv_estimate", s2["cv_gap_points"], s2["cv_gap_points"] <= 5.0,
                f"estimate {100 * s2['cv_estimate_mean']:.1f} % vs test {100 * s2['accuracy_mean']:.1f} %, mean "
                f"|gap| {s2['cv_gap_points']:.1f} points")
        if "np-lora-all" in m:
            saved = 1 - s2["seconds_mean"] / m["np-lora-all"]["seconds_mean"]
            add("skip2_vs_np_lora_all", saved, saved >= 0.90,
                f"1 - {s2['seconds_mean']:.4f} s / {m['np-lora-all']['seconds_mean']:.4f} s = {100 * saved:.1f} % less")
        if "torch-ft-all" in m:
            gap = 100 * (s2["accuracy_mean"] - m["torch-ft-all"]["accuracy_mean"])
            add("skip2_acc_vs_torch_ft_all", gap, gap >= -1.0,
                f"{100 * s2['accuracy_mean']:.1f} % vs {100 * m['torch-ft-all']['accuracy_mean']:.1f} % "
                f"= {gap:+.1f} points")
        if protocol == "fan":
            rss = s2["peak_rss_mb"]
            add("skip2_peak_rss", rss, rss <= 100.0, f"{rss:.1f} MB (whole process; "
                                                      f"{s2['rss_after_imports_mb']:.1f} MB after imports)")
    fit = results.get("scaling", {}).get("fit")
    if fit:
        add("cached_epoch_linear", fit["r2"], fit["r2"] >= 0.99,
            f"epoch = {1e3 * fit['intercept']:.2f} ms + {1e6 * fit['slope']:.3f} us x N, R^2 = {fit['r2']:.4f}, "
            f"max |residual| {100 * fit['max_rel_residual']:.1f} %")
    return out


def _fmt_parts(parts: dict) -> str:
    return " / ".join(f"{1e3 * parts.get(p, 0.0):.1f}" for p in PARTS)


def rows(results: dict) -> list[list[str]]:
    m = results["methods"]
    ref = m.get(SKIP2, {}).get("seconds_mean")
    out = []
    for method, r in m.items():
        ratio = f"{r['seconds_mean'] / ref:.1f}x" if ref else "-"
        out.append([r["name"], r["engine"], f"{100 * r['accuracy_mean']:.1f} ± {100 * r['accuracy_std']:.1f}",
                    f"{r['seconds_mean']:.3f} ± {r['seconds_std']:.3f}", ratio, _fmt_parts(r["breakdown"]),
                    f"{r['peak_rss_mb']:.0f}", f"{r['trainable_params']:,}", f"{r['process_seconds']:.1f}"])
    return out


HEADER = ["method", "engine", "accuracy %", "fine-tune s", "vs Skip2", "ms: backbone/fwd/bwd/update/eval/other",
          "peak RSS MB", "trainable", "process s"]


def markdown(results: dict) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in rows(results)]
    return "\n".join(lines)


def text_table(results: dict) -> str:
    table = [HEADER] + rows(results)
    widths = [max(len(r[i]) for r in table) for i in range(len(HEADER))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in table)


def target_lines(results: dict) -> list[str]:
    return [f"{'PASS' if t['pass'] else 'MISS'}  {t['text']}: {t['detail']}" for t in results["targets"]]
