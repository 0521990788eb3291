"""A holdout fine-tune's candidates (`val_fraction` > 0): time and outcome, on the fan protocol's data.

    python -m device_bench.holdout_bench [--bench-out bench_out/fan] [--repeats 5]

Reads the bundle and fine-tune set a `python -m device_bench run --protocol fan` left in --bench-out
(bundles/fan-mlp, data/fan-x1.npz). Trains the default holdout grid (every form, weight decay of the grid and
tap scaling: 16 candidates) with the Skip-Cache and without it (Skip-LoRA: the
backbone on every batch), one thread. Prints, per case, the median and spread of the fine-tune's CPU time over
`repeats` runs, the chosen recipe and best epoch, the test accuracy, and a digest of the adapter's parameters
(equal digests: equal adapters, bit for bit).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import time
from pathlib import Path

from .profile import THREADS_ENV, check_threads

os.environ.update(THREADS_ENV)   # one thread, before numpy is imported (profile.py)

EPOCHS, BATCH = 30, 20   # the protocol's fine-tuning defaults (datasets/README.md)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bench-out", type=Path, default=Path("bench_out/fan"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    check_threads()
    import numpy as np

    from edgelora import Backbone, Predictor, TrainConfig, finetune
    bundle, data = args.bench_out / "bundles" / "fan-mlp", np.load(args.bench_out / "data" / "fan-x1.npz")
    if not bundle.is_dir():
        raise SystemExit(f"{bundle} is missing: run `python -m device_bench run --protocol fan --out {args.bench_out}`")
    config = TrainConfig(val_fraction=0.2, weight_decay="auto", epochs=EPOCHS, batch_size=BATCH)
    for cached in (True, False):
        seconds = []
        for _ in range(args.repeats):
            backbone = Backbone(bundle, threads=1)
            t = time.process_time()
            adapter, history = finetune(backbone, data["x_ft"], data["y_ft"], config, use_cache=cached)
            seconds.append(time.process_time() - t)
        accuracy = Predictor(backbone, adapter).evaluate(data["x_te"], data["y_te"])["accuracy"]
        print(f"{'cached' if cached else 'backbone every batch'}: {len(history.candidates)} candidates, CPU s median "
              f"{statistics.median(seconds):.3f} (min {min(seconds):.3f}, max {max(seconds):.3f}); chosen "
              f"{history.chosen}, best epoch {history.best_epoch}; test accuracy {100 * accuracy:.2f} %; adapter "
              f"sha256 {hashlib.sha256(adapter.flat.tobytes()).hexdigest()[:16]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
