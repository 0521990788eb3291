"""Fine-tuning without Python: the training kit on onnxruntime (Python, JS node, JS wasm) against numpy.

    python -m device_bench.kit_bench [--protocol fan|demo] [--repeats 5] [--out bench_out/kit_fan]

The fan protocol's fine-tune set and reference MLP (or `--protocol demo`), one explicit recipe (below). Each run is its own
process, pinned to one thread. Fine-tune time is in-process (cache fill + training, imports and session
loading excluded), as in the main benchmark; peak RSS is the whole process's (os.wait4). Targets:
JS node <= 1.5x and JS wasm <= 3x the numpy trainer's time. Reported: the median over `repeats` runs and
the ratio of medians, in wall time and in CPU time (on a shared, busy machine a run that needs a few ms of
CPU per epoch waits tens of ms for a core, so wall time penalises slower runtimes more than their work).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CLIENT = REPO / "clients" / "js" / "src" / "cli.js"
RECIPE = {"r": 4, "weight_decay": 0.1, "epochs": 30, "batch_size": 20, "lr": 3e-3, "seed": 0}
METHODS = ("numpy", "onnx", "js-node", "js-wasm")
TARGETS = {"js-node": 1.5, "js-wasm": 3.0}
WARM = 5  # epochs after which the JIT (V8's wasm tier-up) has settled: "warm epoch" is the fastest epoch after
#           these (the least disturbed by other processes), the cost of an epoch once the runtime is warm


def _config():
    import dataclasses

    from edgelora import TrainConfig
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    settings = {**RECIPE, "val_fraction": 0.0, "cv_folds": 0, "tap_scaling": "none", "form": "skip"}
    return TrainConfig(**{k: v for k, v in settings.items() if k in fields})


def worker(engine: str, folder: Path) -> dict:
    """One Python fine-tune (numpy or onnx engine) in this process."""
    from edgelora import Backbone, Predictor, finetune
    backbone = Backbone(folder / "bundle")
    x, y = np.load(folder / "x.npy"), np.load(folder / "y.npy")
    cpu = time.process_time()
    adapter, history = finetune(backbone, x, y, _config(), engine=engine)
    cpu = time.process_time() - cpu
    adapter.save(folder / f"adapter_{engine}")
    test = np.load(folder / "test.npz")
    return {"cache_seconds": history.cache_seconds, "train_seconds": history.train_seconds, "cpu_seconds": cpu,
            "epoch_seconds": [e["seconds"] for e in history.epochs],
            "accuracy": Predictor(backbone, adapter).evaluate(test["x"], test["y"])["accuracy"]}


def _run(cmd: list[str]) -> tuple[dict, int, float, float]:
    """(JSON printed by the child, its peak RSS in bytes, wall seconds, CPU seconds)."""
    start = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)  # reap it ourselves: the child's own rusage (Popen.wait would discard it)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed with exit code {p.returncode}; run it by hand to see why")
    return (json.loads(out.decode().strip().splitlines()[-1]), usage.ru_maxrss * 1024, time.perf_counter() - start,
            usage.ru_utime + usage.ru_stime)


def prepare(folder: Path, protocol: str) -> None:
    """Bundle, kit, x.npy/y.npy (fine-tune set) and test.npz of the fan protocol or the demo."""
    from edgelora import Backbone
    from edgelora.graphs.kit import KitRecipe, build_kit
    folder.mkdir(parents=True, exist_ok=True)
    if protocol == "fan":
        from device_bench.backbones import reference_bundle
        from device_bench.protocols import fan
        data = fan()
        src = reference_bundle("fan", data, folder / "bundles")
    else:
        from edgelora.cli.demo import BUNDLE as src
        from edgelora.cli.demo_data import splits
        data = splits(0)
    if not (folder / "bundle").exists():
        shutil.copytree(src, folder / "bundle")
    np.save(folder / "x.npy", data["finetune"][0])
    np.save(folder / "y.npy", data["finetune"][1])
    np.savez(folder / "test.npz", x=data["test"][0], y=data["test"][1])
    recipe = KitRecipe(r=RECIPE["r"], batch_size=RECIPE["batch_size"])
    defaults = {k: RECIPE[k] for k in ("epochs", "lr", "weight_decay", "seed")}
    build_kit(Backbone(folder / "bundle").manifest, recipe, defaults).save(folder / "kit")


def command(method: str, folder: Path) -> list[str]:
    if method in ("numpy", "onnx"):
        return [sys.executable, "-m", "device_bench.kit_bench", "--worker", method, "--out", str(folder)]
    return [shutil.which("node") or "node", str(CLIENT), "train", "--bundle", str(folder / "bundle"), "--kit",
            str(folder / "kit"), "--x", str(folder / "x.npy"), "--y", str(folder / "y.npy"), "--out",
            str(folder / f"adapter_{method}"), "--backend", method.split("-")[1], "--json"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None, help="work folder (default bench_out/kit_PROTOCOL)")
    ap.add_argument("--protocol", choices=("fan", "demo"), default="fan")
    ap.add_argument("--worker", choices=("numpy", "onnx"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.out = args.out or REPO / "bench_out" / f"kit_{args.protocol}"
    if args.worker:
        print(json.dumps(worker(args.worker, args.out)))
        return 0
    prepare(args.out, args.protocol)
    runs = {m: [] for m in METHODS}
    for _ in range(args.repeats):  # interleaved, so a burst of load hits every method alike
        for m in METHODS:
            r, rss, wall, cpu = _run(command(m, args.out))
            runs[m].append({"seconds": r["cache_seconds"] + r["train_seconds"], "rss": rss, "wall": wall, "cpu": cpu,
                            "ft_cpu": r["cpu_seconds"],
                            "warm_epoch": float(np.min(r["epoch_seconds"][WARM:]))})
    from edgelora import Backbone, Predictor, load_adapter
    backbone, test = Backbone(args.out / "bundle"), np.load(args.out / "test.npz")
    ref = {m: load_adapter(args.out / f"adapter_{m}", backbone.manifest) for m in METHODS}
    med = {m: {k: float(np.median([r[k] for r in runs[m]])) for k in runs[m][0]} for m in METHODS}
    rows = []
    for m in METHODS:
        row = {"method": m, **med[m], "min_seconds": min(r["seconds"] for r in runs[m]),
               "peak_rss_mb": max(r["rss"] for r in runs[m]) / 2**20,
               "accuracy": Predictor(backbone, ref[m]).evaluate(test["x"], test["y"])["accuracy"],
               "max_abs_diff_vs_numpy": float(np.abs(ref[m].flat - ref["numpy"].flat).max()),
               "max_abs_diff_vs_onnx": float(np.abs(ref[m].flat - ref["onnx"].flat).max())}
        row["ratios"] = {k: med[m][k] / med["numpy"][k] for k in ("seconds", "ft_cpu", "warm_epoch")}
        rows.append(row)
        verdict = "" if m not in TARGETS else " " + ", ".join(
            f"{k} {'PASS' if v <= TARGETS[m] else 'MISS'}" for k, v in row["ratios"].items()) + f" (target <= {TARGETS[m]}x)"
        print(f"{m:8s} fine-tune {row['seconds']:.3f} s (min {row['min_seconds']:.3f}), CPU {row['ft_cpu']:.3f} s, "
              f"warm epoch {1e3 * row['warm_epoch']:.2f} ms: " + " / ".join(f"{v:.2f}x" for v in row["ratios"].values())
              + f" numpy{verdict}; process {row['wall']:.2f} s ({row['cpu']:.2f} s CPU), peak RSS "
              f"{row['peak_rss_mb']:.0f} MB; accuracy {row['accuracy']:.4f}; max |adapter - numpy's| "
              f"{row['max_abs_diff_vs_numpy']:.1e}, - onnx's {row['max_abs_diff_vs_onnx']:.1e}")
    (args.out / "kit_bench.json").write_text(json.dumps({"recipe": RECIPE, "results": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
