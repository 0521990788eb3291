"""Fine-tuning without Python: the training kit on onnxruntime (Python, JS node, JS wasm, the browser page in
headless Chromium and Firefox) against numpy.

    python -m device_bench.kit_bench [--protocol fan|demo] [--repeats 5] [--out bench_out/kit_fan] [--methods ...]

The fan protocol's fine-tune set and reference MLP (or `--protocol demo`), one explicit recipe (below). Each run is its own
process, pinned to one thread. Fine-tune time is in-process (cache fill + training, imports and session
loading excluded), as in the main benchmark; peak RSS is the whole process's (os.wait4). Targets:
JS node <= 1.5x and JS wasm <= 3x the numpy trainer's time. The browser columns run the page
(clients/js/web, wasm in a Web Worker, one thread: no cross-origin isolation under a plain static server)
in a fresh profile each time; their fine-tune time is the page's cache fill + training from the click,
measured inside the worker (the page warms its kernels up at load, while a user collects samples: reported,
not counted; `--page-query '&open=0'` warms up inside the fine-tune and counts it, `&warm=0` skips it); a
browser's CPU time is that of all its processes from the click to the result (Linux /proc; it also covers the
test set's cache fill, the before/after evaluations and the page's drawing, which numpy's leaves out); no RSS.
`--isolate` serves the page with COOP/COEP headers (wasm threads). Reported: the median over `repeats` runs and
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
METHODS = ("numpy", "onnx", "js-node", "js-wasm", "chromium", "firefox")
BROWSERS = ("chromium", "firefox")
TARGETS = {"js-node": 1.5, "js-wasm": 3.0, "chromium": 3.0, "firefox": 3.0}
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
    np.savez(folder / "finetune.npz", x=data["finetune"][0], y=data["finetune"][1])  # what the page reads
    recipe = KitRecipe(r=RECIPE["r"], batch_size=RECIPE["batch_size"])
    defaults = {k: RECIPE[k] for k in ("epochs", "lr", "weight_decay", "seed")}
    build_kit(Backbone(folder / "bundle").manifest, recipe, defaults).save(folder / "kit")


def command(method: str, folder: Path) -> list[str]:
    if method in ("numpy", "onnx"):
        return [sys.executable, "-m", "device_bench.kit_bench", "--worker", method, "--out", str(folder)]
    return [shutil.which("node") or "node", str(CLIENT), "train", "--bundle", str(folder / "bundle"), "--kit",
            str(folder / "kit"), "--x", str(folder / "x.npy"), "--y", str(folder / "y.npy"), "--out",
            str(folder / f"adapter_{method}"), "--backend", method.split("-")[1], "--json"]


def measure(method: str, folder: Path, url: str | None, page: dict) -> dict:
    """One run of `method`: fine-tune seconds, CPU (None for a browser), first and warm epoch, process figures."""
    if method in BROWSERS:
        from device_bench.page_server import drive_page
        out = folder / f"adapter_{method}"
        shutil.rmtree(out, ignore_errors=True)  # the browser's downloads would not overwrite the last run's
        r = drive_page(shutil.which("node") or "node", method, url, out, query="&chart=0" + page["query"],
                       visits=page["visits"])
        t = r["timings"]
        ahead = t["warm"] if r["warmedAhead"] else 0.0  # warmed up at page load, before the click
        return {"seconds": t["warm"] - ahead + t["cache"] + t["train"], "rss": 0, "wall": t["total"], "cpu": None,
                "ft_cpu": r.get("browserCpu"), "first_epoch": t["epochs"][0], "warm_epoch": float(np.min(t["epochs"][WARM:])),
                "warm_up": t["warm"], "warm_up_ahead": ahead, "threads": r["threads"]}
    r, rss, wall, cpu = _run(command(method, folder))
    return {"seconds": r["cache_seconds"] + r["train_seconds"], "rss": rss, "wall": wall, "cpu": cpu,
            "ft_cpu": r["cpu_seconds"], "first_epoch": r["epoch_seconds"][0],
            "warm_epoch": float(np.min(r["epoch_seconds"][WARM:])), "warm_up": 0.0, "warm_up_ahead": 0.0, "threads": 1}


def _median(values: list) -> float | None:
    return None if values[0] is None else float(np.median(values))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None, help="work folder (default bench_out/kit_PROTOCOL)")
    ap.add_argument("--protocol", choices=("fan", "demo"), default="fan")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="default: all (numpy first)")
    ap.add_argument("--visits", type=int, default=1, help="browsers: fine-tune this many times in one profile and "
                    "report the last (2: a returning user, whose browser cached the compiled wasm; default 1)")
    ap.add_argument("--page-query", default="", help="browsers: extra URL parameters, e.g. '&warm=0' (no warm-up), "
                    "'&warmup=S' (warm up at most S seconds at load; 0: one pass), '&settle=0' (for all S seconds)")
    ap.add_argument("--isolate", action="store_true", help="browsers: serve the page cross-origin isolated "
                    "(COOP/COEP headers), so onnxruntime-web runs wasm threads (up to 4)")
    ap.add_argument("--worker", choices=("numpy", "onnx"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.out = args.out or REPO / "bench_out" / f"kit_{args.protocol}"
    if args.worker:
        print(json.dumps(worker(args.worker, args.out)))
        return 0
    prepare(args.out, args.protocol)
    methods = ["numpy"] + [m for m in args.methods if m != "numpy"]
    server, url = None, None
    if any(m in BROWSERS for m in methods):
        from device_bench.page_server import serve_page
        shutil.rmtree(args.out / "site", ignore_errors=True)
        server, url = serve_page(args.out / "site", args.out, isolate=args.isolate)
    runs = {m: [] for m in methods}
    try:
        for _ in range(args.repeats):  # interleaved, so a burst of load hits every method alike
            for m in methods:
                runs[m].append(measure(m, args.out, url, {"query": args.page_query, "visits": args.visits}))
    finally:
        if server:
            server.shutdown()
    from edgelora import Backbone, Predictor, load_adapter
    backbone, test = Backbone(args.out / "bundle"), np.load(args.out / "test.npz")
    ref = {m: load_adapter(args.out / f"adapter_{m}", backbone.manifest) for m in methods}
    med = {m: {k: _median([r[k] for r in runs[m]]) for k in runs[m][0]} for m in methods}
    rows = []
    for m in methods:
        row = {"method": m, **med[m], "min_seconds": min(r["seconds"] for r in runs[m]),
               "peak_rss_mb": max(r["rss"] for r in runs[m]) / 2**20,
               "accuracy": Predictor(backbone, ref[m]).evaluate(test["x"], test["y"])["accuracy"],
               "max_abs_diff_vs_numpy": float(np.abs(ref[m].flat - ref["numpy"].flat).max()),
               "max_abs_diff_vs_onnx": float(np.abs(ref[m].flat - ref["onnx"].flat).max()) if "onnx" in ref else None}
        row["ratios"] = {k: None if med[m][k] is None else med[m][k] / med["numpy"][k]
                         for k in ("seconds", "ft_cpu", "first_epoch", "warm_epoch")}
        rows.append(row)
        print(_line(row))
    (args.out / "kit_bench.json").write_text(json.dumps({"recipe": RECIPE, "visits": args.visits, "isolate": args.isolate,
                                                         "page_query": args.page_query, "results": rows}, indent=1))
    return 0


def _line(row: dict) -> str:
    """One method's figures and its ratios to numpy (PASS/MISS against its target)."""
    m, ratios = row["method"], {k: v for k, v in row["ratios"].items() if v is not None}
    verdict = "" if m not in TARGETS else " " + ", ".join(
        f"{k} {'PASS' if v <= TARGETS[m] else 'MISS'}" for k, v in ratios.items()
        if not (k == "ft_cpu" and m in BROWSERS)) + f" (target <= {TARGETS[m]}x)"  # a browser's CPU covers more
    cpu = "" if row["ft_cpu"] is None else f", {'browser ' if m in BROWSERS else ''}CPU {row['ft_cpu']:.3f} s"
    proc = "" if m in BROWSERS else f"; process {row['wall']:.2f} s ({row['cpu']:.2f} s CPU), peak RSS {row['peak_rss_mb']:.0f} MB"
    warm_up = "" if not row["warm_up"] else f" (warm-up {row['warm_up']:.3f} s " + (
        "at page load, not counted)" if row["warm_up_ahead"] else "included)") + (
        f" ({row['threads']:.0f} threads)" if row.get("threads", 1) > 1 else "")
    diff = "" if row["max_abs_diff_vs_onnx"] is None else f", - onnx's {row['max_abs_diff_vs_onnx']:.1e}"
    return (f"{m:8s} fine-tune {row['seconds']:.3f} s{warm_up} (min {row['min_seconds']:.3f}){cpu}, first epoch "
            f"{1e3 * row['first_epoch']:.2f} ms, warm epoch {1e3 * row['warm_epoch']:.2f} ms: "
            + " / ".join(f"{k} {v:.2f}x" for k, v in ratios.items()) + f" numpy{verdict}{proc}; accuracy "
            f"{row['accuracy']:.4f}; max |adapter - numpy's| {row['max_abs_diff_vs_numpy']:.1e}{diff}")


if __name__ == "__main__":
    sys.exit(main())
