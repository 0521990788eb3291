"""Reference backbones: the export/ reference bundles when present, else the reference MLP pre-trained here.

datasets/README.md: MLP d_in -> 96 -> 96 -> classes with ReLU, Adam lr 1e-3, batch 64, 30 epochs, seed 0,
on the standardised source split (standardisation kept in the bundle's manifest). Deterministic: one
thread, seeded init and shuffles. Bundles are written once under `root` and reused.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
EXPORTED = REPO / "artifacts" / "bundles"          # where export/reference.py writes its bundles (issue 3)
PRETRAIN = {"lr": 1e-3, "batch_size": 64, "epochs": 30, "seed": 0, "hidden": (96, 96)}


def pretrain_mlp(x: np.ndarray, y: np.ndarray, num_classes: int, lr: float = 1e-3, batch_size: int = 64,
                 epochs: int = 30, seed: int = 0, hidden=(96, 96)):
    """The reference MLP (export.models.MLP) trained on standardised (x, y); returns the torch module."""
    import torch
    from export.models import MLP
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    net = MLP(x.shape[1], num_classes, tuple(hidden))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    xt, yt = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64))
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), batch_size):
            b = perm[i:i + batch_size]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xt[b]), yt[b]).backward()
            opt.step()
    return net.eval()


def exported_bundle(protocol: str, arch: str) -> Path | None:
    """export/reference.py's bundle for (protocol, arch) if it has been built (artifacts/bundles/)."""
    for name in (f"{protocol}_{arch}", f"{protocol}-{arch}") + ((protocol,) if arch == "mlp" else ()):
        if (EXPORTED / name / "edgelora_bundle.json").is_file():
            return EXPORTED / name
    return None


def reference_bundle(protocol: str, data: dict, root: Path, arch: str = "mlp", prefer_exported: bool = True) -> Path:
    """The bundle of `protocol`'s reference backbone: export/'s if built, else pre-trained here (MLP)."""
    found = exported_bundle(protocol, arch) if prefer_exported else None
    if found is not None:
        return found
    if arch != "mlp":
        raise FileNotFoundError(f"no {arch} bundle for {protocol} under {EXPORTED}; build the reference "
                                f"backbones first (export/reference.py, issue 3)")
    folder = Path(root) / f"{protocol}-mlp"
    stamp = {"protocol": protocol, "arch": arch, **PRETRAIN, "source_samples": int(len(data["source"][1]))}
    if (folder / "edgelora_bundle.json").is_file() and (folder / "pretrain.json").is_file() \
            and json.loads((folder / "pretrain.json").read_text()) == json.loads(json.dumps(stamp)):
        return folder
    import torch
    from edgelora.files.bundle import Standardize
    from export import export_model
    xs, ys = data["source"]
    net = pretrain_mlp((xs - data["mean"]) / data["std"], ys, len(data["classes"]), **PRETRAIN)
    export_model(net, torch.zeros(2, xs.shape[1]), folder, classes=data["classes"],
                 preprocess={"x": Standardize(data["mean"].tolist(), data["std"].tolist())})
    (folder / "pretrain.json").write_text(json.dumps(stamp, indent=1, sort_keys=True))
    return folder
