"""The lab's backbones of the shift protocols: small torch models (with and without batch-norm), pre-trained
on the clean source split and exported with edgelora's own export; cached under bench_out/shift/bundles.

Each bundle folder also keeps `model.pt` (the torch weights, batch-norm statistics included) and
`model.json` (how to rebuild the module), so PyTorch and PEFT start from the very model the bundle holds.
Deterministic: seeded initial weights and shuffles, a fixed thread count; rebuilt when missing or when
its recorded recipe differs from this file's. The recipe records the export format (EXPORT): a bundle written
by an older export is re-exported from its kept weights (no new pre-training when only the export changed).
Imports torch: used by the orchestrator and torch workers only.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

SEED, THREADS = 0, 2
# what the bundle's export writes, recorded in model.json; bump it when edgelora_export changes what a bundle
# holds, so cached bundles are re-exported. 2: batch-norm kept as its own node, with recalibrate.onnx beside it
EXPORT = 2


class Conv1dNet(nn.Module):
    """(N, T, C) series -> two Conv1d(k 5) blocks [+ BatchNorm] -> mean over time, or flatten -> Linear."""

    def __init__(self, channels: int, classes: int, length: int, width: int = 32, bn: bool = True,
                 head: str = "mean"):
        super().__init__()
        norm = (lambda: nn.BatchNorm1d(width)) if bn else nn.Identity
        self.block1 = nn.Sequential(nn.Conv1d(channels, width, 5, padding=2), norm(), nn.ReLU(), nn.MaxPool1d(2))
        self.block2 = nn.Sequential(nn.Conv1d(width, width, 5, padding=2), norm(), nn.ReLU())
        self.flatten = head == "flatten"
        if self.flatten:
            self.block2.append(nn.MaxPool1d(2))
        self.head = nn.Linear(width * (length // 4) if self.flatten else width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block2(self.block1(x.transpose(1, 2)))          # (N, width, T')
        return self.head(h.flatten(1) if self.flatten else h.mean(dim=2))


class Conv2dNet(nn.Module):
    """(N, time, mel) log-mel -> three Conv2d blocks [+ BatchNorm] -> mean over time, 4 mel groups -> Linear."""

    def __init__(self, classes: int, width: int = 16, bn: bool = True):
        super().__init__()
        norm = (lambda c: nn.BatchNorm2d(c)) if bn else (lambda c: nn.Identity())
        self.features = nn.Sequential(
            nn.Conv2d(1, width // 2, 3, padding=1, stride=2), norm(width // 2), nn.ReLU(),
            nn.Conv2d(width // 2, width, 3, padding=1), norm(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), norm(2 * width), nn.ReLU())
        self.head = nn.Linear(2 * width * 5, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x.unsqueeze(1)).mean(dim=2)             # (N, 2 width, mel / 4 = 10)
        return self.head(h.unflatten(2, (5, 2)).mean(dim=3).flatten(1))


class MLP(nn.Module):
    """The paper's kind of model over the flattened input: d -> 96 -> 96 -> classes with ReLU."""

    def __init__(self, d_in: int, classes: int):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(d_in, 96), nn.ReLU(), nn.Linear(96, 96), nn.ReLU(),
                                 nn.Linear(96, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


KINDS = {"conv1d": Conv1dNet, "conv2d": Conv2dNet, "mlp": MLP}
# protocol -> backbone name -> (kind, constructor kwargs, pre-training epochs, lr)
BACKBONES = {
    "har-mount": {"cnn1d-bn": ("conv1d", {"channels": 6, "classes": 6, "length": 128, "bn": True}, 12, 1e-3),
                  "cnn1d": ("conv1d", {"channels": 6, "classes": 6, "length": 128, "bn": False}, 12, 1e-3),
                  "mlp": ("mlp", {"d_in": 768, "classes": 6}, 30, 1e-3)},
    "series-clock": {"cnn1d-bn-flat": ("conv1d", {"channels": 20, "classes": 10, "length": 49, "bn": True,
                                                  "head": "flatten"}, 20, 1e-3),
                     "mlp": ("mlp", {"d_in": 980, "classes": 10}, 40, 1e-3)},
    "fsdd-mic": {"cnn2d-bn": ("conv2d", {"classes": 10, "bn": True}, 6, 3e-3),
                 "cnn2d": ("conv2d", {"classes": 10, "bn": False}, 6, 3e-3)},
}


def make(recipe: dict) -> nn.Module:
    """The untrained module of a model.json recipe, seeded."""
    torch.manual_seed(SEED)
    return KINDS[recipe["kind"]](**recipe["kwargs"])


def load(folder: str | Path) -> nn.Module:
    """The pre-trained torch model kept beside a bundle (eval mode)."""
    folder = Path(folder)
    model = make(json.loads((folder / "model.json").read_text()))
    model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    return model.eval()


def bundle(protocol: str, name: str, data: dict, root: Path, log=print, statistics: tuple = ()) -> Path:
    """The bundle of `protocol`'s backbone `name` under root/protocol/name, pre-trained and exported if absent
    or stale (re-exported from its kept weights when only the export format changed); `statistics`: the tap
    statistics it also offers (export_model's, docs/taps.md). A new bundle is written
    beside and swapped in whole, so a crash leaves no half bundle."""
    from edgelora import Backbone          # here, not at the top: a torch worker only needs `load`
    from edgelora.files.bundle import BUNDLE_FORMAT_VERSION
    from edgelora.files.fileio import atomic_write, dumps_json
    from edgelora_export import export_model
    from edgelora_export.pretrain import pretrain
    kind, kwargs, epochs, lr = BACKBONES[protocol][name]
    xs, ys = data["source"]
    recipe = {"kind": kind, "kwargs": kwargs, "epochs": epochs, "lr": lr, "seed": SEED, "threads": THREADS,
              "batch_size": 64, "source_samples": int(len(ys)), "torch": torch.__version__,
              "export": EXPORT, "bundle_format": BUNDLE_FORMAT_VERSION,
              **({"statistics": list(statistics)} if statistics else {})}
    folder = Path(root) / protocol / name
    old = json.loads((folder / "model.json").read_text()) if (folder / "model.json").is_file() else None
    if old == recipe:
        return folder
    model = make(recipe)
    xn = (xs - data["mean"]) / data["std"]
    if old is not None and same_weights(old, recipe) and (folder / "model.pt").is_file():
        log(f"  re-exporting {protocol}/{name} (export format {old.get('export', 1)} -> {EXPORT}; weights kept)")
        model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    else:
        log(f"  pre-training {protocol}/{name} ({kind}, {epochs} epochs on {len(ys)} clean source samples)")
        pretrain(model, xn, ys, threads=THREADS, epochs=epochs, lr=lr, seed=SEED)
    model.eval()
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    export_model(model, torch.from_numpy(np.ascontiguousarray(xn[:8], np.float32)), tmp / "bundle",
                 classes=data["classes"], preprocess={"x": (data["mean"], data["std"])}, input_names=["x"],
                 statistics=tuple(statistics))
    torch.save(model.state_dict(), tmp / "model.pt")
    backbone = Backbone(tmp / "bundle", threads=1)
    acc = {k: float((backbone.run(data[k][0])[0].argmax(1) == data[k][1]).mean()) for k in ("test_clean", "test")}
    atomic_write(tmp / "reference.json", dumps_json({"clean_test_accuracy": acc["test_clean"],
                                                     "shifted_test_accuracy": acc["test"], **recipe}))
    atomic_write(tmp / "model.json", dumps_json(recipe))        # written last: marks the folder complete
    if folder.exists():
        if not (folder / "model.json").is_file():
            raise FileExistsError(f"{folder} exists but is not a backbone this benchmark wrote (no model.json); "
                                  f"move it away or choose another --bundles folder")
        shutil.rmtree(folder)
    tmp.rename(folder)
    log(f"    clean test {100 * acc['test_clean']:.1f} %, shifted test {100 * acc['test']:.1f} %")
    return folder


def same_weights(old: dict, recipe: dict) -> bool:
    """Whether a recorded recipe pre-trained the same weights as `recipe`: equal except the export's fields."""
    def training(r: dict) -> dict:
        return {k: v for k, v in r.items() if k not in ("export", "bundle_format", "statistics")}
    return training(old) == training(recipe)
