"""Peak memory of `edgelora finetune --memory-budget` as the number of samples grows, under an address-space limit.

    python -m device_bench.memory_scale [--samples 10000 100000 200000 1000000] [--budget-mb 16]
                                        [--limit-mb 512] [--out DIR] [--no-limit]

The demo bundle (edgelora/data/demo_bundle: 64 inputs, taps 64 + 64 + 32, 10 classes) fine-tuned on N
samples: the demo's 400 fine-tune digits repeated with a little noise (every sample distinct, so every one is
a cache row). Each run is `edgelora finetune BUNDLE --data fan.npz --memory-budget B --cache-dir DIR` in its
own process, its address space capped (RLIMIT_AS, set before edgelora is imported: device_bench/memory512.py)
unless --no-limit. Prints exit status, peak RSS, peak RSS above the first run's (list the demo's own 400 samples first:
what every run pays, imports and onnxruntime), that over the budget, and the wall time.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from device_bench.memory512 import measure

REPO = Path(__file__).resolve().parents[1]
MB = 2**20
DEMO = REPO / "bench_out" / "memory_scale" / "demo_files"   # `edgelora demo --save-data`: the bundle and digits


def make_data(path: Path, n: int, seed: int = 0) -> int:
    """N noisy copies of the demo's fine-tune digits (written in chunks: the bench itself stays small); bytes."""
    if path.is_file():
        return path.stat().st_size
    base = demo_arrays()
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(base[0]), n)
    x = base[0][pick] + rng.normal(0.0, 0.05, (n, base[0].shape[1])).astype(np.float32)
    np.savez(path, x=x.astype(np.float32), y=base[1][pick])
    return path.stat().st_size


def demo_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The demo's fine-tune samples (x, y), from `edgelora demo --save-data` in a scratch folder."""
    scratch = DEMO
    if not (scratch / "finetune.npz").is_file():
        subprocess.run([sys.executable, "-m", "edgelora.cli", "demo", "--no-plot", "--quiet", "--save-data",
                        str(scratch)], check=True, capture_output=True)
    d = np.load(scratch / "finetune.npz")
    return d["x"], d["y"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, nargs="+", default=[400, 10_000, 100_000, 200_000, 1_000_000])
    ap.add_argument("--budget-mb", type=float, default=16.0, help="--memory-budget of every run (MB)")
    ap.add_argument("--limit-mb", type=int, default=512, help="address-space limit per process (MB)")
    ap.add_argument("--no-limit", action="store_true", help="no address-space limit (peak RSS only)")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more finetune arguments")
    ap.add_argument("--out", type=Path, default=REPO / "bench_out" / "memory_scale")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    demo_arrays()
    bundle = str(DEMO / "bundle")
    limit = 1 << 20 if a.no_limit else a.limit_mb                 # 1 TB: no limit in practice
    rows = []
    for n in a.samples:
        data = a.out / f"digits_{n}.npz"
        size = make_data(data, n)
        cache = a.out / f"cache_{n}"
        argv = ["finetune", bundle, "--data", data.name, "--out", f"adapter_{n}", "--overwrite", "--json",
                "--memory-budget", str(a.budget_mb), "--cache-dir", cache.name, *a.extra]
        r = measure(f"N={n}", argv, limit, a.out)
        r.update(samples=n, data_mb=round(size / MB, 1))
        rows.append(r)
    (a.out / "results.json").write_text(json.dumps(rows, indent=1, sort_keys=True))
    print(f"--memory-budget {a.budget_mb:g} MB, " + ("no address-space limit" if a.no_limit else
          f"RLIMIT_AS {a.limit_mb} MB") + "; the 400-sample row is the demo's own size: what any fine-tune pays (imports, onnxruntime)")
    print(f"{'samples':>9} {'data MB':>8} {'exit':>4} {'peak RSS':>9} {'above first':>11} {'/budget':>7} "
          f"{'wall s':>7}  result")
    for r in rows:
        above = r["peak_rss_mb"] - rows[0]["peak_rss_mb"]
        out = json.loads(r["stdout"]) if r["exit_status"] == 0 and r["stdout"].startswith("{") else {}
        what = out.get("chosen", {}) and f"chosen {out['chosen'].get('form')}" if out else " | ".join(r["stderr_tail"])[:90]
        print(f"{r['samples']:>9} {r['data_mb']:>8.1f} {r['exit_status']:>4} {r['peak_rss_mb']:>6.1f} MB "
              f"{above:>8.1f} MB {above / a.budget_mb:>7.2f} {r['seconds']:>7.2f}  {what}")
    return 0 if all(r["exit_status"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
