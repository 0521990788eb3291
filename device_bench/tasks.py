"""Protocol -> fine-tune tasks on disk: one .npz per task (fine-tune and test halves) plus its bundle.

Workers load only their task's arrays, as a device would hold only its own samples (the protocol loaders
read whole datasets, which would inflate every worker's RSS). Inputs are stored raw: standardisation
is part of the bundle (its manifest), applied by each engine.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from . import protocols
from edgelora.files.bundle import BUNDLE_KIND, load_manifest, verify_bundle
from edgelora.files.outputs import remove_own

from .backbones import EXPORTED, exported_bundle, reference_bundle

PROTOCOLS = ("fan", "har", "fsdd", "mnist")


DEFAULT_ARCH = {"fan": "mlp", "har": "mlp", "fsdd": "cnn2d", "mnist": "cnn2d"}
FSDD_FOLDS = range(6)


def load(protocol: str, arch: str, bundles: Path, bundle: str | None = None) -> list[tuple]:
    """[(task name, (x_ft, y_ft), (x_te, y_te), bundle path)] of a protocol.

    fsdd: one task per held-out speaker whose bundle (pre-trained without that speaker) has been built.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    loader = getattr(protocols, protocol, None)
    if loader is None:
        raise NotImplementedError(f"device_bench.protocols.{protocol}() does not exist")
    if protocol == "fsdd":
        folds = [k for k in FSDD_FOLDS if bundle or exported_bundle("fsdd", f"{arch}_fold{k}")]
        if not folds:
            raise FileNotFoundError(f"no fsdd bundles ({arch}_fold<k>) under {EXPORTED}; build them with "
                                    f"`python -m device_bench.reference --protocols fsdd --fsdd-folds 0,1,2,3,4,5`")
        out = []
        for k in folds:
            d = loader(k)
            path = Path(bundle) if bundle else exported_bundle("fsdd", f"{arch}_fold{k}")
            out.append((f"fsdd-fold{k}", d["finetune"], d["test"], path))
        return out
    data = loader()
    path = Path(bundle) if bundle else reference_bundle(protocol, data, bundles, arch)
    if "users" in data:
        return [(f"{protocol}-user{u}", d["finetune"], d["test"], path) for u, d in data["users"].items()]
    return [(protocol, data["finetune"], data["test"], path)]


def write_task(path: Path, ft: tuple, te: tuple) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x_ft=np.asarray(ft[0], np.float32), y_ft=np.asarray(ft[1], np.int64),
             x_te=np.asarray(te[0], np.float32), y_te=np.asarray(te[1], np.int64))
    return str(path)


def prepare(protocol: str, out: Path, bundles: Path, arch: str | None = None, bundle: str | None = None,
            subset: int | None = None) -> list[dict]:
    """Write the task files under out/data and a copy of each bundle under out/bundles; returns
    [{"name", "bundle", "data", "n_ft", "n_te", "fingerprint", "source_bundle"}].

    Inputs are reshaped to the bundle's input shape (har's flat windows -> (128, 6) for a 1D CNN).
    subset: keep about `subset` fine-tune and test samples of each task (the smoke configuration).
    """
    specs, snapshots = [], {}
    for name, ft, te, path in load(protocol, arch or DEFAULT_ARCH[protocol], bundles, bundle):
        if path not in snapshots:  # every worker reads the same bytes even if the source is rebuilt meanwhile
            snapshots[path] = _snapshot(Path(path), Path(out) / "bundles" / Path(path).name)
        source, path = path, snapshots[path]
        if subset:
            ft, te = _stratified(ft, subset), _stratified(te, subset)
        shape = [int(s) for s in load_manifest(path).inputs[0].shape[1:]]
        ft, te = ((x.reshape(len(x), *shape), y) for x, y in (ft, te))
        specs.append({"name": name, "bundle": str(path), "data": write_task(Path(out) / "data" / f"{name}.npz", ft, te),
                      "n_ft": int(len(ft[1])), "n_te": int(len(te[1])),
                      "fingerprint": load_manifest(path).fingerprint, "source_bundle": str(source)})
    return specs


def _snapshot(src: Path, dst: Path) -> Path:
    """Copy a bundle folder (verified: the ONNX file matches its fingerprint) for this run."""
    remove_own(dst, BUNDLE_KIND)  # an earlier snapshot, never anything else
    shutil.copytree(src, dst)
    verify_bundle(dst)
    return dst


def _stratified(xy: tuple, n: int) -> tuple:
    """About n samples spread evenly over the set (keeps every class and the time order)."""
    x, y = xy
    idx = np.unique(np.linspace(0, len(y) - 1, min(n, len(y))).astype(int))
    return x[idx], y[idx]


def scaled_task(ft: tuple, factor: float, seed: int = 0) -> tuple:
    """The fine-tune set at `factor` x its size: a random subset (factor <= 1), else copies with 1 %
    Gaussian jitter per feature (distinct samples, so the Skip-Cache cannot merge them)."""
    x, y = np.asarray(ft[0], np.float32), np.asarray(ft[1])
    rng = np.random.default_rng(seed)
    if factor <= 1:
        keep = np.sort(rng.permutation(len(y))[:max(2, int(round(factor * len(y))))])
        return x[keep], y[keep]
    reps = int(round(factor))
    scale = 0.01 * x.std(axis=0, keepdims=True)
    xs = [x] + [x + scale * rng.standard_normal(x.shape, np.float32) for _ in range(reps - 1)]
    return np.concatenate(xs), np.tile(y, reps)
