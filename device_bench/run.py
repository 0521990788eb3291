"""`python -m device_bench run`: every method on one protocol, each in its own process, then the report.

Defaults at the top; see README.md for the device profile and the recipe.
"""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import replace
from importlib import metadata
from pathlib import Path

import numpy as np

from . import plots, report, scaling
from .config import BenchConfig, METHODS, check_methods
from .launch import REPO, spawn
from .tasks import DEFAULT_ARCH, prepare

SEEDS = 3
OUT = REPO / "bench_out"                 # git-ignored
BUNDLES = OUT / "bundles"                # the reference MLPs pre-trained here (when device_bench.reference's are absent)
METHOD_ORDER = list(METHODS)


def device_info() -> dict:
    """What machine and library versions produced the numbers."""
    cpu = ""
    try:
        cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "")
    except OSError:
        pass

    def version(pkg):
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None
    return {"platform": platform.platform(), "machine": platform.machine(), "cpu": cpu, "cores": os.cpu_count(),
            "python": platform.python_version(), "numpy": version("numpy"), "onnxruntime": version("onnxruntime"),
            "torch": version("torch"), "threads": 1}


def base_accuracy(tasks: list[dict]) -> float:
    """Accuracy of the backbone without fine-tuning (mean over tasks)."""
    from edgelora import Backbone, Predictor
    accs = []
    for t in tasks:
        with np.load(t["data"], allow_pickle=False) as f:
            accs.append(Predictor(Backbone(t["bundle"])).evaluate(f["x_te"], f["y_te"])["accuracy"])
    return float(np.mean(accs))


def run(protocol: str, seeds: int = SEEDS, out: str | Path | None = None, methods: list[str] | None = None,
        cfg: BenchConfig = BenchConfig(), arch: str | None = None, bundle: str | None = None, subset: int | None = None,
        with_scaling: bool | None = None, scaling_factors=scaling.FACTORS, scaling_methods=scaling.N_METHODS,
        ranks=scaling.RANKS, max_address_space_mb: int | None = None, profile: bool = True, plot: bool = True,
        bundles: Path = BUNDLES, repeat: int = 1, ort_python: str | None = None, log=print) -> dict:
    """Run the benchmark; writes results.json, results.md and PNGs into `out`; returns the results dict."""
    out = Path(out) if out is not None else OUT / protocol
    out.mkdir(parents=True, exist_ok=True)
    methods = check_methods(methods or [m for m in METHOD_ORDER if ort_python or not m.startswith("ort-")])
    if any(m.startswith("ort-") for m in methods) and not ort_python:
        raise ValueError("the onnxruntime-training methods need `--ort-python`: the python of a virtual "
                         "environment with onnxruntime-training==1.19.2 and onnx==1.17.0 (README)")
    if seeds < 1 or repeat < 1:
        raise ValueError(f"`seeds` and `repeat` should be at least 1, found {seeds} and {repeat}")
    load = [os.getloadavg()[0]]
    arch = arch or DEFAULT_ARCH[protocol]
    tasks = prepare(protocol, out, bundles, arch, bundle, subset)
    log(f"{protocol}: {len(tasks)} task(s), bundle {tasks[0]['source_bundle']} ({tasks[0]['fingerprint'][:19]}), "
        f"fine-tune/test samples "
        f"{tasks[0]['n_ft']}/{tasks[0]['n_te']}{' (first task)' if len(tasks) > 1 else ''}; load {load[0]:.2f}")
    processes = []
    for seed in range(seeds):          # seeds outer: every method sees the same machine conditions
        for method in methods:
            rep = spawn({"method": method, "seeds": [seed], "tasks": tasks, "config": cfg.to_dict(),
                         "python": ort_python if method.startswith("ort-") else None,
                         "profile": profile, "max_address_space_mb": max_address_space_mb, "repeat": repeat},
                        out / "specs")
            processes.append(rep)
            acc = np.mean([r["accuracy"] for r in rep["runs"]])
            sec = np.mean([r["seconds"] for r in rep["runs"]])
            log(f"  seed {seed} {method:15s} acc {100 * acc:5.1f} %  fine-tune {sec:8.4f} s  "
                f"peak RSS {rep['peak_rss_mb']:6.1f} MB  process {rep['process_seconds']:5.1f} s")
        load.append(os.getloadavg()[0])
    results = {"protocol": protocol, "arch": arch, "config": cfg.to_dict(), "seeds": seeds, "repeat": repeat,
               "device": device_info(),
               "tasks": tasks, "before_accuracy": base_accuracy(tasks), "methods": report.aggregate(processes),
               "processes": processes, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    if with_scaling if with_scaling is not None else protocol == "fan":
        log("scaling with N and rank:")
        results["scaling"] = scaling.run(tasks[0], out, cfg, factors=scaling_factors, methods=scaling_methods,
                                         ranks=ranks, seeds=seeds, repeat=repeat, log=log)
        load.append(os.getloadavg()[0])
    results["load_average_1min"] = load
    results["targets"] = report.targets(results)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    md = [f"### {protocol} ({arch}), {seeds} seed(s), median of {repeat} run(s) per seed, 1-min load "
          f"{min(load):.2f}-{max(load):.2f}",
          "", report.markdown(results), "", *[f"- {line}" for line in report.target_lines(results)]]
    if results.get("scaling"):
        md += ["", "#### cost vs N and rank", "", scaling.markdown(results["scaling"])]
    (out / "results.md").write_text("\n".join(md) + "\n")
    if plot:
        results["plots"] = plots.write_all(results, out)
    log("")
    log(report.text_table(results))
    log(f"before fine-tuning: {100 * results['before_accuracy']:.1f} %; 1-min load average during the run: "
        f"{min(load):.2f}-{max(load):.2f}")
    for line in report.target_lines(results):
        log(line)
    log(f"wrote {out / 'results.json'}, {out / 'results.md'}" + (", plots" if plot else ""))
    return results


def smoke(out: str | Path, bundles: str | Path, log=print) -> dict:
    """The tiny configuration of the test suite: fan, 1 seed, ~120 samples, 2 epochs, every method, a short
    scaling sweep, on its own reference MLP (pre-trained into `bundles`, independent of artifacts/ that
    another job may be rewriting). Checks that the benchmark runs end to end; its numbers mean nothing."""
    from . import protocols
    from .backbones import reference_bundle
    own = reference_bundle("fan", protocols.fan(), Path(bundles), prefer_exported=False)
    return run("fan", seeds=1, out=out, cfg=replace(BenchConfig(), epochs=2), subset=120, with_scaling=True,
               scaling_factors=(0.5, 1.0, 2.0), scaling_methods=("skip2-lora", "np-lora-all"), ranks=(2,),
               bundle=str(own), log=log)
