"""What re-calibrating normalisation statistics on the device is worth: accuracy with each candidate forced, and
with cross-validation choosing, on input-shifted protocols with batch-norm backbones.

    python -m device_bench.recal_gain [--protocols fan-bn har-gain-bn] [--per-class 5 20] [--seeds 0 1 2 3 4]
    python -m device_bench.recal_gain --serving-cost     # backbone time: batch-norm addressable vs folded

Protocols (data: ../shared/datasets, read in place):
- fan-bn: the fan protocol (silentA -> noisy), an MLP with batch-norm 512 -> 96 -> BN -> 96 -> BN -> 3, inputs
  standardised per feature with the source's statistics.
- har-gain-bn: raw har windows (6 x 128) of the 21 source users; the 9 test users' windows through another
  sensor: accelerometer gain 0.6 and offset +0.3 g, gyroscope gain 1.4, x and y axes swapped. Each test user's
  first half (time order) is the labelled pool, the second half the test set, pooled over users. A 1-D CNN with
  batch-norm (two Conv1d k5 + BN + ReLU, mean over time, Linear), inputs standardised per channel.
Each seed draws `per-class` labelled samples per class from the pool; the fine-tune is TrainConfig's default
but for the batch (at most the samples) and `recalibrate` (none / input / bn / both forced, auto = cross-validation chooses). "adabn only" is the
backbone re-calibrated (both) without any adapter. Prints mean +- std over seeds; --json for the raw rows.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from edgelora import Backbone, Predictor, finetune
from edgelora.files.data import as_inputs
from edgelora.files.recalibration import LayerStats, Recalibration
from edgelora.runtime import recalibrate
from edgelora.runtime.train_config import TrainConfig

from .protocols import _load, fan
from .shifts import user_halves

SEEDS, PER_CLASS, OUT = (0, 1, 2, 3, 4), (5, 20), Path("bench_out/recal")
CHOICES = ("none", "input", "bn", "both", "auto")


def har_gain() -> dict:
    """Raw har windows (N, 6, 128), source users vs the test users through another sensor (module docstring)."""
    d = _load("hapt_raw/hapt_raw_w128.npz")
    keep = d["y"] < 6
    x = d["X"][keep].astype(np.float32).transpose(0, 2, 1)               # (N, 6 channels, 128)
    y, subj = d["y"][keep].astype(np.int64), d["subject"][keep]
    exp, start = d["experiment"][keep], d["start_sample"][keep]
    test_users = [int(u) for u in d["uci_har_test_subjects"]]
    src = ~np.isin(subj, test_users)
    shifted = x[:, [1, 0, 2, 4, 3, 5]] * np.array([.6, .6, .6, 1.4, 1.4, 1.4], np.float32)[:, None]
    shifted[:, :3] += 0.3
    pool, test = user_halves(subj, exp, start, test_users)
    mean = x[src].mean(axis=(0, 2))[:, None]
    std = x[src].std(axis=(0, 2))[:, None] + 1e-6
    return {"source": (x[src], y[src]), "finetune": (shifted[pool], y[pool]), "test": (shifted[test], y[test]),
            "mean": mean, "std": std, "classes": [str(c) for c in range(6)]}


def _model(protocol: str):
    from torch import nn
    if protocol == "fan-bn":
        return nn.Sequential(nn.Linear(512, 96), nn.BatchNorm1d(96), nn.ReLU(), nn.Linear(96, 96), nn.BatchNorm1d(96),
                             nn.ReLU(), nn.Linear(96, 3)), 30
    return nn.Sequential(nn.Conv1d(6, 32, 5, padding=2), nn.BatchNorm1d(32), nn.ReLU(), nn.MaxPool1d(2),
                         nn.Conv1d(32, 32, 5, padding=2), nn.BatchNorm1d(32), nn.ReLU(), nn.AdaptiveAvgPool1d(1),
                         nn.Flatten(), nn.Linear(32, 6)), 8


def bundle(protocol: str, data: dict, out: Path) -> Path:
    """Pre-train on the source split (Adam 1e-3, batch 64, seed 0) and export; reused when already there."""
    folder = out / "bundles" / protocol
    if (folder / "edgelora_bundle.json").is_file():
        return folder
    import torch
    from edgelora_export import export_model
    from edgelora_export.pretrain import pretrain
    torch.manual_seed(0)
    model, epochs = _model(protocol)
    x, y = data["source"]
    model = pretrain(model, (x - data["mean"]) / data["std"], y, threads=1, epochs=epochs)
    export_model(model, torch.from_numpy(x[:4]), folder, classes=data["classes"],
                 preprocess={"input": {"mean": data["mean"], "std": data["std"]}})
    return folder


def draw(y: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """`per_class` pool samples of every class, in pool (time) order."""
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False)
                                   for c in np.unique(y)]))


def run(protocol: str, per_class: int, seed: int, bb: Backbone, data: dict) -> dict:
    (xp, yp), (xt, yt) = data["finetune"], data["test"]
    pick = draw(yp, per_class, seed)
    x, y = xp[pick], yp[pick]
    row = {"protocol": protocol, "per_class": per_class, "seed": seed,
           "no fine-tune": float(np.mean(Predictor(bb).predict(xt) == yt))}
    rc = recalibrate.estimate(bb, as_inputs(x, bb.manifest), "both")
    row["adabn only"] = float(np.mean(Predictor(bb.recalibrated(rc)).predict(xt) == yt))
    for choice in CHOICES:
        start = time.perf_counter()
        adapter, history = finetune(bb, x, y, TrainConfig(seed=seed, recalibrate=choice, batch_size=min(20, len(y))))
        row[choice] = float(np.mean(Predictor(bb, adapter).predict(xt) == yt))
        row[f"{choice} seconds"] = time.perf_counter() - start
        if choice == "auto":
            recal = history.selection.get("recalibration", {})
            row["auto chose"] = recal.get("chosen", "none")
            row["cv scores"], row["cv losses"] = recal.get("scores", {}), recal.get("losses", {})
    return row


def serving_cost(out: Path, repeats: int = 300) -> None:
    """Backbone.rows time at batch 1 and 64 of har-gain-bn's CNN exported as edgelora does (batch-norm
    addressable), with batch-norm folded (the export before), and re-calibrated (statistics given to
    onnxruntime, which then leaves BN unfused), interleaved, median."""
    import torch
    from edgelora_export import batchnorm, export_model
    torch.manual_seed(0)
    model, _ = _model("har-gain-bn")
    model.train()
    with torch.no_grad():
        model(torch.randn(64, 6, 128))
    model.eval()
    folders = {"addressable": out / "cost" / "addressable", "folded": out / "cost" / "folded"}
    find = batchnorm.find
    for name, folder in folders.items():
        if not (folder / "edgelora_bundle.json").is_file():
            batchnorm.find = find if name == "addressable" else (lambda *a, **k: [])
            try:
                export_model(model, torch.randn(4, 6, 128), folder)
            finally:
                batchnorm.find = find
    bbs = {name: Backbone(folder) for name, folder in folders.items()}
    lab = bbs["addressable"].manifest.normalization    # re-calibrated: its own statistics, BN left unfused
    bbs["re-calibrated"] = bbs["addressable"].recalibrated(
        Recalibration("bn", 1, {}, {n.name: LayerStats(n.mean, n.var) for n in lab}))
    for n in (1, 64):
        x = np.random.default_rng(0).standard_normal((n, 6, 128)).astype(np.float32)
        times = {name: [] for name in bbs}
        for _ in range(repeats):
            for name, bb in bbs.items():
                start = time.perf_counter()
                bb.rows(x)
                times[name].append(time.perf_counter() - start)
        med = {name: 1e3 * float(np.median(t)) for name, t in times.items()}
        print(f"batch {n:>3}: " + ", ".join(f"{k} {v:.3f} ms ({v / med['folded']:.2f}x folded)"
                                            for k, v in med.items()), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m device_bench.recal_gain", description=__doc__.split("\n")[0])
    parser.add_argument("--protocols", nargs="+", default=["fan-bn", "har-gain-bn"], choices=("fan-bn", "har-gain-bn"))
    parser.add_argument("--per-class", nargs="+", type=int, default=list(PER_CLASS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--json", action="store_true", help="print every row as JSON too")
    parser.add_argument("--serving-cost", action="store_true", help="only time the backbone, addressable vs folded")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.serving_cost:
        serving_cost(args.out)
        return 0
    cols = ["no fine-tune", "adabn only"] + list(CHOICES)
    print(f"{'protocol':<12} {'n/cls':>5}  " + "  ".join(f"{c:>12}" for c in cols) + "  auto chose")
    for protocol in args.protocols:
        data = fan() if protocol == "fan-bn" else har_gain()
        if protocol == "fan-bn":
            data["source"] = (data["source"][0], data["source"][1].astype(np.int64))
        bb = Backbone(bundle(protocol, data, args.out))
        for k in args.per_class:
            rows = [run(protocol, k, s, bb, data) for s in args.seeds]
            if args.json:
                print(json.dumps(rows))
            cells = [f"{100 * np.mean([r[c] for r in rows]):5.1f} ± {100 * np.std([r[c] for r in rows]):4.1f}" for c in cols]
            chose = {c: sum(r["auto chose"] == c for r in rows) for c in ("none", "input", "bn", "both")}
            print(f"{protocol:<12} {k:>5}  " + "  ".join(f"{c:>12}" for c in cells) + "  " +
                  " ".join(f"{c}:{n}" for c, n in chose.items() if n), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
