"""`python -m device_bench.deep_step`: the deep tier's optimiser step at two batch sizes, on the input-shift
backbones. If a step were bound by numpy's per-call cost, k folds' mini-batches stacked into one would cost
about one step; the ratio printed says how far from that the engine is (docs/deep.md).

Each backbone is the shift protocol's (bench_out/shift/bundles, made by `python -m device_bench.shift_bench`);
the inputs are the first rows of its fine-tune pool. One thread; medians of REPEATS timed steps.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # before numpy: one thread, as on a small board
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from edgelora.core import deep_loop  # noqa: E402
from edgelora.core.backprop import init_params  # noqa: E402
from edgelora.core.lora import split  # noqa: E402
from edgelora.core.losses import cross_entropy_grad  # noqa: E402
from edgelora.graphs.onnx_chain import load_chain  # noqa: E402

from . import shifts  # noqa: E402
from .shift_bench import OUT  # noqa: E402

CASES = ("har-mount/cnn1d-bn", "har-mount/cnn1d", "har-mount/mlp", "series-clock/cnn1d-bn-flat", "fsdd-mic/cnn2d-bn")
BATCHES = (20, 100)      # the default mini-batch, and five folds' mini-batches stacked
RANK, SCALE = 32, 2.0    # the deep tier's rank and alpha / r
REPEATS = 30


def step_ms(case: str, bundles, batch: int) -> float:
    """Median CPU milliseconds of one forward and backward (no optimiser update) at `batch` rows."""
    protocol, name = case.split("/")
    chain = load_chain(bundles / protocol / name / "bundle")
    pool_x, pool_y = shifts.build(protocol)["pool"]
    x, y = chain.prep(pool_x[:max(BATCHES)]), pool_y[:max(BATCHES)]
    eng = deep_loop.engine(chain, RANK, SCALE)
    flat, shapes = init_params(chain, eng.modes, RANK, 0)
    p, g = split(flat, shapes), split(np.zeros_like(flat), shapes)
    stem = eng.stem(x, deep_loop.STEM_BYTES)
    rows = np.eye(chain.manifest.num_outputs, dtype=np.float32)[y]
    b, times = np.arange(batch), []
    for _ in range(REPEATS + 3):
        t = time.process_time()
        out, saved = eng.forward(p, None, first=stem.rows(b)) if stem else eng.forward(p, eng.prefix(x[b]))
        eng.backward(cross_entropy_grad(out, rows[b]).astype(np.float32), saved, p, g)
        times.append(time.process_time() - t)
    return 1000 * float(np.median(times[3:]))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(CASES), help="protocol/backbone, comma-separated")
    ap.add_argument("--bundles", default=str(OUT / "bundles"), help="where shift_bench keeps the backbones")
    args = ap.parse_args(argv)
    print(f"load average {os.getloadavg()[0]:.2f}; rank {RANK}; medians of {REPEATS} steps")
    for case in args.cases.split(","):
        ms = [step_ms(case, Path(args.bundles), b) for b in BATCHES]
        print(f"{case:28s} batch {BATCHES[0]}: {ms[0]:7.2f} ms   batch {BATCHES[1]}: {ms[1]:8.2f} ms   "
              f"ratio {ms[1] / ms[0]:5.2f}x")


if __name__ == "__main__":
    main()
