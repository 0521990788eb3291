"""What `--checkpoint-dir` costs per epoch: one fine-tune without and one with checkpoints, same settings.

    edgelora demo --no-plot --save-data demo_files          # the demo's bundle and labelled scans
    python -m device_bench.checkpoint_cost demo_files --epochs 400 3000 [--scratch /dev/shm]

Prints, per epoch count, both times, the added milliseconds per epoch, the median time of one save over
the first and the last 200 epochs, and the checkpoint folder's size. A save that costs the same at the
last epoch as at the first is what edgelora/files/checkpoint.py promises. `--scratch` on a RAM disk leaves out
the disk's own fsync time (which varies with whatever else the machine writes).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import edgelora.runtime.train
from edgelora import Backbone, TrainConfig, finetune

RANK, WEIGHT_DECAY = 8, 0.1  # the demo's recipe with one fixed weight decay (one run per fine-tune)


def measure(folder: Path, epochs: int, scratch: Path | None = None) -> dict:
    data = np.load(folder / "finetune.npz")
    backbone = Backbone(folder / "bundle")
    settings = {"epochs": epochs, "r": RANK, "weight_decay": WEIGHT_DECAY, "val_fraction": 0.2, "tap_scaling": "none"}
    # one plain holdout run; fields an older edgelora lacks are left out, so it measures the same work
    cfg = TrainConfig(**{k: v for k, v in settings.items() if k in TrainConfig.__dataclass_fields__})
    start = time.perf_counter()
    finetune(backbone, data["x"], data["y"], cfg)
    plain = time.perf_counter() - start
    scratch = Path(tempfile.mkdtemp(prefix="edgelora-ckpt-", dir=scratch))
    saves, save = [], edgelora.runtime.train.save_checkpoint

    def timed(*args):
        t = time.perf_counter()
        save(*args)
        saves.append(time.perf_counter() - t)
    edgelora.runtime.train.save_checkpoint = timed
    try:
        start = time.perf_counter()
        finetune(backbone, data["x"], data["y"], cfg, checkpoint_dir=scratch / "ckpt")
        checkpointed = time.perf_counter() - start
        size = sum(p.stat().st_size for p in (scratch / "ckpt").iterdir())
    finally:
        edgelora.runtime.train.save_checkpoint = save
        shutil.rmtree(scratch, ignore_errors=True)
    k = min(200, len(saves) // 2)
    return {"epochs": epochs, "without_s": plain, "with_s": checkpointed,
            "added_ms_per_epoch": 1000 * (checkpointed - plain) / epochs, "checkpoint_bytes": size,
            "first_save_ms": 1000 * statistics.median(saves[:k]), "last_save_ms": 1000 * statistics.median(saves[-k:])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="a folder written by `edgelora demo --save-data`")
    ap.add_argument("--epochs", type=int, nargs="+", default=[400, 3000])
    ap.add_argument("--scratch", type=Path, default=None, help="where the checkpoint is written (default: temp)")
    args = ap.parse_args()
    for epochs in args.epochs:
        r = measure(args.folder, epochs, args.scratch)
        print(f"epochs {epochs}: without checkpoints {r['without_s']:.2f} s, with {r['with_s']:.2f} s "
              f"(+{r['added_ms_per_epoch']:.1f} ms per epoch); one save: median {r['first_save_ms']:.2f} ms over "
              f"the first 200 epochs, {r['last_save_ms']:.2f} ms over the last 200; checkpoint folder "
              f"{r['checkpoint_bytes']} bytes", flush=True)


if __name__ == "__main__":
    main()
