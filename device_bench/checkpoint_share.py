"""The share of a fine-tune's time spent saving checkpoints, measured inside the run (robust to a busy machine).

    edgelora demo --no-plot --save-data demo_files
    python -m device_bench.checkpoint_share demo_files [--repeats 3] [--scratch DIR]

Each fine-tune runs with `checkpoint_dir`, its `save_checkpoint` calls timed from within: the share is
(seconds inside saves) / (the fine-tune's seconds), both taken in the same process at the same time, so
the machine's load scales both alike. Settings: the default (cross-validation, then the refit; its
outcome is saved once it is known, runtime/cv_checkpoint.py) and an explicit long run (1000 epochs, no
cross-validation), each with the default pacing (`auto`: files/checkpoint.Pacer) and with a save every
epoch. The target: the default pacing keeps the share at or under 10 %.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import edgelora.runtime.cv_checkpoint
import edgelora.runtime.train
from edgelora import Backbone, TrainConfig, finetune

SETTINGS = {"default (cross-validation + refit)": TrainConfig(),
            "1000 epochs, no cross-validation": TrainConfig(epochs=1000, r=8, weight_decay=0.1, cv_folds=0,
                                                            form="skip", tap_scaling="none")}


def share(backbone: Backbone, x, y, cfg: TrainConfig, every, scratch: Path | None) -> dict:
    """One fine-tune with checkpoints: its seconds, the seconds inside saves, and how many saves."""
    folder = Path(tempfile.mkdtemp(prefix="edgelora-share-", dir=scratch))
    saves = []
    modules = (edgelora.runtime.train, edgelora.runtime.cv_checkpoint)
    real = [m.save_checkpoint for m in modules]

    def timed(*args):
        t = time.perf_counter()
        real[0](*args)
        saves.append(time.perf_counter() - t)
    for m in modules:
        m.save_checkpoint = timed
    try:
        start = time.perf_counter()
        finetune(backbone, x, y, cfg, checkpoint_dir=folder / "ckpt", checkpoint_every=every)
        total = time.perf_counter() - start
    finally:
        for m, f in zip(modules, real):
            m.save_checkpoint = f
        shutil.rmtree(folder, ignore_errors=True)
    return {"seconds": total, "save_seconds": sum(saves), "saves": len(saves)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="a folder written by `edgelora demo --save-data`")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scratch", type=Path, default=None, help="where checkpoints are written (default: temp)")
    a = ap.parse_args()
    data = np.load(a.folder / "finetune.npz")
    backbone = Backbone(a.folder / "bundle")
    print(f"{'settings':<36} {'pacing':<11} {'saves':>5} {'run s':>7} {'in saves s':>10} {'share':>7}")
    for name, cfg in SETTINGS.items():
        for label, every in (("auto", None), ("every epoch", ("epochs", 1))):
            rows = [share(backbone, data["x"], data["y"], cfg, every, a.scratch) for _ in range(a.repeats)]
            shares = [r["save_seconds"] / r["seconds"] for r in rows]
            mid = rows[shares.index(statistics.median(shares))] if a.repeats % 2 else rows[0]
            print(f"{name:<36} {label:<11} {mid['saves']:>5} {mid['seconds']:>7.2f} {mid['save_seconds']:>10.3f} "
                  f"{100 * statistics.median(shares):>6.1f}%  (all: "
                  + ", ".join(f"{100 * s:.1f}%" for s in shares) + ")", flush=True)


if __name__ == "__main__":
    main()
