"""How a fine-tune chooses its recipe, mechanism by mechanism, on few samples of a shifted input.

    python -m device_bench.selection [--per-class 5,20] [--seeds 5] [--arch mlp] [--variants NAME,...]

The case: har's raw 6-axis windows of the 9 test users with the phone re-mounted (both triplets rotated
70 degrees, gain 0.6, an offset), over the har reference backbone (artifacts/bundles/har_<arch>, from
`python -m device_bench.reference --protocols har`). Per seed, `per-class` labelled windows of each class
are drawn from the users' first halves; the test set is every second half. Each variant is
`edgelora.finetune` with TrainConfig fields changed (VARIANTS: "today" is main's selection, "default" the
new one, the others switch one mechanism off, or on: "repeats"), beside PyTorch FT-All as users run it (Adam 1e-3, batch
20, 30 epochs). Prints accuracy mean +- std over seeds, how often each is below no fine-tuning, and time.
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from edgelora import Backbone, Predictor, TrainConfig, finetune

from .backbones import exported_bundle
from .protocols import _load

VARIANTS = {
    "today": dict(epochs=30, cv_rule="folds", identity=False),
    "default": {},
    "no-floor": dict(epochs=30),                  # explicit 30 epochs: no step floor, no extension
    "no-extension": dict(cv_seconds=1e-9),        # the floor, never extended
    "repeats": dict(cv_repeats=0),                # folds repeated below 100 samples (4 at 30)
    "rule-folds": dict(cv_rule="folds"),
    "rule-best": dict(cv_rule="best"),
    "no-identity": dict(identity=False),
}


def rotation(axis, degrees: float) -> np.ndarray:
    """3x3 rotation about `axis` (Rodrigues)."""
    k = np.asarray(axis, float) / np.linalg.norm(axis)
    a = np.deg2rad(degrees)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(a) * kx + (1 - np.cos(a)) * kx @ kx


def remounted(x: np.ndarray) -> np.ndarray:
    """(N, 128, 6) windows as a phone mounted at 70 degrees with another gain and offset records them."""
    r = rotation((0.3, 0.2, 1.0), 70.0)
    acc, gyro = x[..., :3] @ r.T * 0.6 + np.array([0.1, -0.1, 0.05]), x[..., 3:] @ r.T * 0.6
    return np.concatenate([acc, gyro], axis=-1).astype(np.float32)


def case() -> tuple[tuple, tuple]:
    """((pool x, y), (test x, y)): the 9 test users' first and second halves, re-mounted, flattened."""
    d = _load("hapt_raw/hapt_raw_w128.npz")
    keep = d["y"] < 6
    x, y, subj = d["X"][keep].astype(np.float32), d["y"][keep], d["subject"][keep]
    exp, start = d["experiment"][keep], d["start_sample"][keep]
    pool, test = [], []
    for u in d["uci_har_test_subjects"]:
        idx = np.flatnonzero(subj == u)
        idx = idx[np.lexsort((start[idx], exp[idx]))]
        pool.append(idx[:len(idx) // 2])
        test.append(idx[len(idx) // 2:])
    pool, test = np.concatenate(pool), np.concatenate(test)
    xs = remounted(x).reshape(len(x), -1)
    return (xs[pool], y[pool]), (xs[test], y[test])


def draw(pool: tuple, per_class: int, seed: int) -> tuple:
    """per_class samples of each class, drawn at random, kept in pool (time) order."""
    rng = np.random.default_rng(seed)
    idx = np.sort(np.concatenate([rng.choice(np.flatnonzero(pool[1] == c), per_class, replace=False)
                                  for c in np.unique(pool[1])]))
    return pool[0][idx], pool[1][idx]


def torch_ft_all(bundle, x, y, seed: int) -> tuple[object, float]:
    """PyTorch FT-All as users run it: (a predict function, seconds)."""
    from .chain import load_chain
    from .config import BenchConfig
    from .torch_methods import accuracy, finetune_torch
    chain = load_chain(str(bundle))
    net, record = finetune_torch("torch-ft-all", chain, x, y, BenchConfig(), seed)
    return (lambda xt, yt: accuracy(net, chain, xt, yt)), record["seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-class", default="5,20")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--arch", default="mlp")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    bundle = exported_bundle("har", args.arch)
    if bundle is None:
        raise SystemExit("build the har reference backbones first: python -m device_bench.reference --protocols har")
    backbone = Backbone(bundle, threads=1)
    pool, (xt, yt) = case()
    if args.arch != "mlp":
        pool, xt = (pool[0].reshape(-1, 128, 6), pool[1]), xt.reshape(-1, 128, 6)
    before = Predictor(backbone).evaluate(xt, yt)["accuracy"]
    print(f"har re-mounted, {args.arch}: no fine-tuning {100 * before:.1f} % on {len(yt)} test windows")
    for per_class in map(int, args.per_class.split(",")):
        print(f"\n{per_class} per class ({6 * per_class} samples), {args.seeds} seeds", flush=True)
        draws = [draw(pool, per_class, seed) for seed in range(args.seeds)]
        names = args.variants.split(",") + ([] if args.no_torch else ["torch-ft-all"])
        for name in names:
            rows = []
            for seed, (x, y) in enumerate(draws):
                if name == "torch-ft-all":
                    predict, secs = torch_ft_all(bundle, x, y, seed)
                    rows.append((predict(xt, yt), secs, "all", 30, float("nan")))
                    continue
                t0 = time.perf_counter()
                adapter, h = finetune(backbone, x, y, dataclasses.replace(TrainConfig(seed=seed), **VARIANTS[name]))
                secs = time.perf_counter() - t0
                rows.append((Predictor(backbone, adapter).evaluate(xt, yt)["accuracy"], secs, h.chosen.get("form"),
                             h.chosen.get("epochs"), h.selection.get("chosen", {}).get("score", float("nan"))))
            acc = np.array([a for a, *_ in rows])
            print(f"  {name:<14} {100 * acc.mean():5.1f} +- {100 * acc.std():4.1f} %  below no fine-tuning "
                  f"{int((acc < before).sum())}/{len(acc)}  {np.mean([s for _, s, *_ in rows]):.3f} s  "
                  f"chosen {[(f, e) for _, _, f, e, _ in rows]}  cv {[round(100 * c, 1) for *_, c in rows]}", flush=True)


if __name__ == "__main__":
    main()
