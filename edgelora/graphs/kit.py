"""The training kit: Skip2-LoRA training as plain ONNX graphs plus a JSON contract, for any onnxruntime.

A kit folder holds `train_epoch.onnx`, `evaluate.onnx` and `kit.json`. The contract names the backbone
it belongs to (ONNX fingerprint and the manifest fields that change what it computes), the recipe baked
into the graphs (rank, alpha, bias, batch size, optimiser, clipping), the flat parameter layout (the
adapter file's, see lora.py), every graph input and output, the defaults of the run settings the client
supplies (epochs, lr schedule, weight decay, class weights, seed) and the SHA-256 of each graph file.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..core.lora import Layout
from ..core.shape import AdapterShape
from ..files.adapter import layout_for
from ..files.bundle import Manifest
from ..files.fileio import PathLike, dumps_json, write_folder
from ..files.formats import check_checksum, check_version, digest, with_checksum
from ..files.outputs import check_target, folder_kind
from ..files.readers import read_bounded, read_json, safe_child
from ..files.schema import check, normalize, to_dict
from .kit_graphs import evaluate_graph, train_epoch_graph
from .onnx_utils import IR_VERSION, OLDEST_ORT, OPSET

KIT_FORMAT_VERSION = 1
CONTRACT_FILE, TRAIN_FILE, EVAL_FILE = "kit.json", "train_epoch.onnx", "evaluate.onnx"
MAX_GRAPH_BYTES = 64 * 2**20
BETAS, EPS = (0.9, 0.999), 1e-8  # optim.Adam's defaults
CONTRACT_FIELDS = {"format", "format_version", "opset", "ir_version", "oldest_onnxruntime", "backbone", "recipe",
                   "layout", "defaults", "prng", "graphs", "checksum"}
KIT_KIND = folder_kind("training kit folder", CONTRACT_FILE, (TRAIN_FILE, EVAL_FILE))


@dataclass(frozen=True)
class KitRecipe(AdapterShape):
    """What the graphs bake in: the adapter's shape (r, lora_alpha, bias: core/shape.py) and the optimiser.
    Run settings (epochs, lr, weight decay, seed, ...) stay client inputs."""
    batch_size: int = 20                              # samples per step (the last step may be smaller)
    optimizer: Literal["sgd", "adam", "adamw"] = "adamw"
    momentum: float = 0.9                             # SGD only
    clip_norm: float | None = None                    # clip the gradient's L2 norm to this

    def __post_init__(self):
        normalize(self)
        super().__post_init__()   # the shape's checks
        check(self.batch_size >= 1, f"`batch_size` should be a positive integer, found {self.batch_size}")
        check(0 <= self.momentum < 1, f"`momentum` should be in [0, 1), found {self.momentum}")
        check(self.clip_norm is None or self.clip_norm > 0, f"`clip_norm` should be positive, found {self.clip_norm}")


@dataclass
class Kit:
    """The two graphs (serialized ONNX) and the contract describing them."""
    train_epoch: bytes
    evaluate: bytes
    contract: dict

    def save(self, folder: PathLike, *, overwrite: bool = False) -> Path:
        """Write the kit folder in one atomic swap. An existing `folder` must be a kit or empty, unless
        `overwrite` (see edgelora.files.outputs)."""
        check_target(folder, KIT_KIND, overwrite=overwrite)
        return write_folder(folder, {TRAIN_FILE: self.train_epoch, EVAL_FILE: self.evaluate,
                                     CONTRACT_FILE: dumps_json(with_checksum(self.contract))}, "training kit")


def kit_layout(kit: Kit) -> Layout:
    """The flat parameter layout the kit's graphs train (its contract's `layout`)."""
    lay = kit.contract["layout"]
    return Layout(tuple(lay["taps"]), tuple(lay["widths"]), lay["num_outputs"], lay["rank"], lay["bias"])


def build_kit(manifest: Manifest, recipe: KitRecipe, defaults: dict | None = None) -> Kit:
    """The kit for this backbone and recipe; `defaults`: run settings to record (TrainConfig field names)."""
    layout, scale = layout_for(manifest, recipe.r, recipe.bias), recipe.alpha / recipe.r
    train = train_epoch_graph(layout, scale, task=manifest.task, batch_size=recipe.batch_size,
                              optimizer=recipe.optimizer, momentum=recipe.momentum, clip_norm=recipe.clip_norm,
                              betas=BETAS, eps=EPS).SerializeToString()
    evaluate = evaluate_graph(layout, scale, manifest.task).SerializeToString()
    return Kit(train, evaluate, _contract(manifest, recipe, layout, train, evaluate, defaults or {}))


def _contract(manifest: Manifest, recipe: KitRecipe, layout: Layout, train: bytes, evaluate: bytes,
              defaults: dict) -> dict:
    m = to_dict(manifest)
    tensors, offset = [], 0
    for name, shape in layout.shapes.items():
        tensors.append({"name": name, "offset": offset, "shape": list(shape)})
        offset += math.prod(shape)
    c, width = layout.num_outputs, layout.num_outputs + sum(layout.widths)
    cls = manifest.task == "classification"
    targets = {"name": "targets", "dtype": "int64" if cls else "float32", "shape": ["N"] if cls else ["N", c]}
    state = [{"name": n, "dtype": "float32", "shape": [layout.size]} for n in ("params", "opt_m", "opt_v")]
    train_in = [{"name": "rows", "dtype": "float32", "shape": ["N", width]}, targets] + \
        ([{"name": "class_weights", "dtype": "float32", "shape": [c]}] if cls else []) + \
        [{"name": "perm", "dtype": "int64", "shape": ["N"]}, {"name": "lr", "dtype": "float64", "shape": ["steps"]},
         {"name": "weight_decay", "dtype": "float64", "shape": []}] + state + \
        [{"name": "step", "dtype": "int64", "shape": []}]
    train_out = [{**s, "name": s["name"] + "_out"} for s in state] + \
        [{"name": "step_out", "dtype": "int64", "shape": []}, {"name": "finite", "dtype": "bool", "shape": []}]
    return {
        "format": "edgelora-training-kit", "format_version": KIT_FORMAT_VERSION, "opset": OPSET,
        "ir_version": IR_VERSION, "oldest_onnxruntime": OLDEST_ORT,
        "backbone": {"identity": manifest.identity, "model_file": manifest.model_file, "classes": m["classes"],
                     **{k: m[k] for k in ("fingerprint", "inputs", "output", "taps", "preprocess", "task")}},
        "recipe": {**to_dict(recipe), "lora_alpha": recipe.alpha, "scale": recipe.alpha / recipe.r,
                   "betas": list(BETAS), "eps": EPS,
                   "loss": "weighted_cross_entropy" if cls else "mse"},
        "layout": {"taps": list(layout.taps), "widths": list(layout.widths), "num_outputs": c, "rank": layout.r,
                   "bias": layout.bias, "size": layout.size, "row_width": width, "tensors": tensors},
        "defaults": defaults,
        "prng": "splitmix64: see edgelora/core/shuffle.py (stream 0 initialises A, stream 1 draws one Fisher-Yates "
                "permutation of the training rows per epoch)",
        "graphs": {
            "train_epoch": {"file": TRAIN_FILE, "sha256": digest(train),
                            "inputs": train_in, "outputs": train_out,
                            "notes": "one run per epoch; rows = [y0 | taps] of the training samples; lr has "
                                     "one entry per step (ceil(N / batch_size)); state feeds back each epoch; "
                                     "step counts optimiser steps so far; finite is false after NaN/Inf"},
            "evaluate": {"file": EVAL_FILE, "sha256": digest(evaluate),
                         "inputs": [{"name": "rows", "dtype": "float32", "shape": ["N", width]}, targets,
                                    state[0]],
                         "outputs": [{"name": "outputs", "dtype": "float32", "shape": ["N", c]},
                                     {"name": "loss", "dtype": "float32", "shape": []}],
                         "notes": "adapter outputs and unweighted mean loss (cross-entropy or MSE)"},
        },
    }


def load_kit(folder: PathLike, manifest: Manifest | None = None) -> Kit:
    """Read a kit folder, check every graph's SHA-256 and (given a manifest) that it fits that backbone."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"training kit not found: expected a folder with {CONTRACT_FILE} at {folder}")
    path = safe_child(folder, CONTRACT_FILE, "kit contract")
    contract = read_json(path, "kit contract")
    if not isinstance(contract, dict) or contract.get("format") != "edgelora-training-kit":
        raise ValueError(f"{path}: expected an edgelora training kit contract, found "
                         f"format {contract.get('format') if isinstance(contract, dict) else type(contract).__name__!r}")
    check_version(contract, KIT_FORMAT_VERSION, str(path))
    rebuild = "rebuild the kit with `edgelora kit`"
    unknown = sorted(set(contract) - CONTRACT_FIELDS)
    if unknown:  # a contract without a checksum (older kits) is still read, so its field names are checked
        raise ValueError(f"{path}: unknown field(s) {unknown[:5]}; the file is corrupt or was edited - {rebuild}")
    contract = check_checksum(contract, str(path), rebuild)
    try:
        blobs = {key: _graph(folder, key, contract["graphs"][key]) for key in ("train_epoch", "evaluate")}
        kit = Kit(blobs["train_epoch"], blobs["evaluate"], contract)
        kit_layout(kit), recipe_of(kit)  # every field the runtime reads, so none is missing later
        contract["backbone"]["identity"], contract["backbone"]["task"], contract["layout"]["size"]
    except (KeyError, TypeError, IndexError, AttributeError) as e:
        raise ValueError(f"{path}: missing or malformed field {e!s:.80}; the kit is incomplete or corrupt - "
                         f"{rebuild}") from None
    if manifest is not None:
        check_backbone(kit, manifest, str(folder))
    return kit


def _graph(folder: Path, key: str, info: dict) -> bytes:
    """The bytes of graph `key`, checked against the SHA-256 the contract records for it."""
    path = safe_child(folder, info["file"], f"kit graph {key}")
    blob = read_bounded(path, f"kit graph {key}", MAX_GRAPH_BYTES)
    if digest(blob) != info["sha256"]:
        raise ValueError(f"{path} is corrupt or truncated: its SHA-256 does not match {CONTRACT_FILE} "
                         f"(expected {info['sha256']}); rebuild the kit with `edgelora kit`")
    return blob


def check_backbone(kit: Kit, manifest: Manifest, where: str = "training kit") -> None:
    """Refuse a kit built for another backbone."""
    found = kit.contract["backbone"]["identity"]
    if found != manifest.identity:
        raise ValueError(f"{where} was built for another backbone: expected identity {manifest.identity}, found "
                         f"{found}; rebuild it with `edgelora kit BUNDLE`")


def recipe_of(kit: Kit) -> KitRecipe:
    r = kit.contract["recipe"]
    return KitRecipe(**{f.name: r[f.name] for f in dataclasses.fields(KitRecipe)})
