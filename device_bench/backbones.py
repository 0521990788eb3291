"""Reference backbones: the bundles of device_bench.reference when present, else the reference MLP pre-trained here.

datasets/README.md: MLP d_in -> 96 -> 96 -> classes with ReLU, Adam lr 1e-3, batch 64, 30 epochs, seed 0,
on the standardised source split (standardisation kept in the bundle's manifest). Deterministic: one
thread, seeded init and shuffles. Bundles are written once under `root` and reused.
"""
from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXPORTED = REPO / "artifacts" / "bundles"          # where device_bench.reference writes its bundles
PRETRAIN = {"lr": 1e-3, "batch_size": 64, "epochs": 30, "seed": 0, "hidden": (96, 96)}


def exported_bundle(protocol: str, arch: str) -> Path | None:
    """device_bench.reference's bundle for (protocol, arch) if it has been built (artifacts/bundles/)."""
    for name in (f"{protocol}_{arch}", f"{protocol}-{arch}") + ((protocol,) if arch == "mlp" else ()):
        if (EXPORTED / name / "edgelora_bundle.json").is_file():
            return EXPORTED / name
    return None


def reference_bundle(protocol: str, data: dict, root: Path, arch: str = "mlp", prefer_exported: bool = True) -> Path:
    """The bundle of `protocol`'s reference backbone: device_bench.reference's if built, else an MLP pre-trained here."""
    found = exported_bundle(protocol, arch) if prefer_exported else None
    if found is not None:
        return found
    if arch != "mlp":
        raise FileNotFoundError(f"no {arch} bundle for {protocol} under {EXPORTED}; build the reference "
                                f"backbones first (python -m device_bench.reference)")
    folder = Path(root) / f"{protocol}-mlp"
    stamp = {"protocol": protocol, "arch": arch, **PRETRAIN, "source_samples": int(len(data["source"][1]))}
    if (folder / "edgelora_bundle.json").is_file() and (folder / "pretrain.json").is_file() \
            and json.loads((folder / "pretrain.json").read_text()) == json.loads(json.dumps(stamp)):
        return folder
    import torch
    from edgelora.files.bundle import Standardize
    from edgelora_export import export_model
    from edgelora_export.models import MLP
    from edgelora_export.pretrain import pretrain
    xs, ys = data["source"]
    settings = dict(PRETRAIN)
    torch.manual_seed(settings["seed"])                 # the initial weights too
    net = MLP(xs.shape[1], len(data["classes"]), tuple(settings.pop("hidden")))
    pretrain(net, (xs - data["mean"]) / data["std"], ys, threads=1, **settings)
    export_model(net, torch.zeros(2, xs.shape[1]), folder, classes=data["classes"],
                 preprocess={"x": Standardize(data["mean"].tolist(), data["std"].tolist())})
    (folder / "pretrain.json").write_text(json.dumps(stamp, indent=1, sort_keys=True))
    return folder
