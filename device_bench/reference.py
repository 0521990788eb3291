"""Pre-train and export the reference backbones of ../shared/datasets/README.md (deterministic).

    python -m device_bench.reference --out artifacts/bundles [--protocols fan,har,fsdd,mnist] [--fsdd-folds 0]

Writes one bundle folder per model (fan_mlp, har_mlp, har_cnn1d, fsdd_cnn2d_fold<k>, mnist_cnn2d) and
reference.json with each model's source accuracy (on its own pre-training split) and target test
accuracy before any fine-tuning, both measured through edgelora.Backbone on the exported bundle.
Standardisation constants (source statistics) go into each manifest's `preprocess`.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from edgelora import Backbone
from edgelora.files.bundle import FEATURE_MAP_POOLINGS
from edgelora.files.fileio import atomic_write, dumps_json
from edgelora_export import export_model
from edgelora_export.models import CNN1d, CNN2d, MLP
from edgelora_export.pretrain import pretrain

from . import protocols

PROTOCOLS = ("fan", "har", "fsdd", "mnist")
# (epochs, lr): the MLPs follow the README (Adam 1e-3, batch 64, 30 epochs, seed 0); the CNNs use lr 3e-3
# and as many epochs as they need to fit the source split (measured: source accuracy >= 0.95).
SEED = 0
THREADS = 2  # fixed, so a run gives the same weights on every (2-core) machine
SETTINGS = {"mlp": (30, 1e-3), "cnn1d": (15, 1e-3), "fsdd": (12, 3e-3), "mnist": (10, 3e-3)}


def build(name: str, make, data: dict, reshape: tuple | None, settings: tuple, out: Path, targets: dict,
          pooling: str = "global_avg") -> dict:
    """Pre-train `make()` on standardised source data, export the bundle, measure accuracy via edgelora."""
    t0 = time.perf_counter()
    torch.manual_seed(SEED)                     # the initial weights too: the same bundle on every run
    model = make()
    xs, ys = data["source"]
    mean, std = np.asarray(data["mean"], np.float32), np.asarray(data["std"], np.float32)
    if reshape:
        mean, std = mean.reshape(reshape), std.reshape(reshape)
        xs = xs.reshape(len(xs), *reshape)
    epochs, lr = settings
    pretrain(model, (xs - mean) / std, ys, threads=THREADS, epochs=epochs, lr=lr, seed=SEED)
    manifest = export_model(model, (xs[:8] - mean) / std, out / name, classes=data["classes"],
                            preprocess={"x": (mean, std)}, pooling=pooling)
    backbone = Backbone(out / name, threads=2)

    def acc(x, y):
        x = x.reshape(len(x), *reshape) if reshape else x
        return float((backbone.run(x)[0].argmax(1) == y).mean())
    scores = {k: acc(*v) for k, v in targets.items()}
    return {"bundle": name, "source_accuracy": acc(xs.reshape(len(xs), -1) if reshape else xs, ys),
            **{f"{k}_accuracy": v for k, v in scores.items()}, "taps": list(manifest.tap_names),
            "fingerprint": manifest.fingerprint, "export_max_rel_diff": manifest.producer.get("max_rel_diff"),
            "epochs": epochs, "lr": lr, "seconds": round(time.perf_counter() - t0, 1)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="artifacts/bundles", help="folder for the bundles and reference.json")
    ap.add_argument("--protocols", default=",".join(PROTOCOLS), help="comma-separated subset of " + ",".join(PROTOCOLS))
    ap.add_argument("--fsdd-folds", default="0", help="held-out speakers for fsdd, e.g. 0,1,2,3,4,5")
    ap.add_argument("--pooling", default="global_avg", choices=FEATURE_MAP_POOLINGS,
                    help="how the CNNs' feature-map taps are pooled (export_model's `pooling`)")
    args = ap.parse_args(argv)
    chosen = [p.strip() for p in args.protocols.split(",") if p.strip()]
    unknown = sorted(set(chosen) - set(PROTOCOLS))
    if unknown:
        ap.error(f"unknown protocol(s) {unknown}; expected some of {list(PROTOCOLS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    if "fan" in chosen:
        d = protocols.fan()
        results.append(build("fan_mlp", lambda: MLP(512, 3), d, None, SETTINGS["mlp"], out, {"target_test": d["test"]},
                             args.pooling))
    if "har" in chosen:
        d = protocols.har()
        users = {f"target_test_user{u}": v["test"] for u, v in d["users"].items()}
        for name, make, shape, ep in (("har_mlp", lambda: MLP(768, 6), None, SETTINGS["mlp"]),
                                      ("har_cnn1d", lambda: CNN1d(6, 6), (128, 6), SETTINGS["cnn1d"])):
            r = build(name, make, d, shape, ep, out, users, args.pooling)
            r["target_test_accuracy"] = float(np.mean([r.pop(f"{k}_accuracy") for k in users]))
            results.append(r)
    if "fsdd" in chosen:
        for fold in [int(f) for f in args.fsdd_folds.split(",") if f.strip()]:
            d = protocols.fsdd(fold)
            make = lambda: CNN2d(10, 16, pool_width=10, strided=True)   # noqa: E731 (98 time, 40 mel): keep mel
            results.append(build(f"fsdd_cnn2d_fold{fold}", make, d, None, SETTINGS["fsdd"], out,
                                 {"target_test": d["test"]}, args.pooling))
    if "mnist" in chosen:
        d = protocols.mnist()
        results.append(build("mnist_cnn2d", lambda: CNN2d(10, 16, pool_width=7, strided=True), d, None,
                             SETTINGS["mnist"], out, {"target_test": d["test"]}, args.pooling))
    for r in results:
        print(f"{r['bundle']:20s} source {r['source_accuracy']:.3f}  target {r['target_test_accuracy']:.3f}  "
              f"({r['seconds']} s)")
    summary = {r["bundle"]: r for r in results}
    path = out / "reference.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    atomic_write(path, dumps_json({**old, **summary}))
    return summary


if __name__ == "__main__":
    main()
