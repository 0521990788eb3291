"""Deep adapter files: LoRA inside the backbone's own weight layers, saved exactly as PEFT saves LoRA.

`adapter_config.json` is a PEFT LoraConfig (`peft_type` "LORA", `r`, `lora_alpha`, `target_modules` = the
torch model's own module names) plus edgelora's fields (backbone fingerprint, the ONNX initializer of each
target, the weights' SHA-256, how it was trained), which PEFT ignores. `adapter_model.safetensors` holds
PEFT's tensors: `base_model.model.<module>.lora_A.weight` (r, d_in) or (r, C, *k) for a conv, and
`...lora_B.weight` (d_out, r) or (O, r, 1...) for a conv, so `PeftModel.from_pretrained(model, folder)`
loads it onto the original torch model. Where the exporter folded a batch-norm into a conv, the ONNX weight
is out_scale * the torch weight (bundle.TorchWeight, copied into the config): B is stored divided by it.

In memory (DeepAdapter.params) each target is (A, B) in the engine's matrix form (core/backprop.py):
A (fan_in, r), B (r, fan_out), the update of the ONNX weight's matrix form being s A B.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from safetensors.numpy import save as st_save

from ..core.shape import check_alpha, check_rank
from .bundle import Manifest, TorchWeight
from .checked import CheckedFolder
from .fileio import PathLike
from .outputs import check_target, folder_kind
from .readers import parse_safetensors
from .recalibration import Recalibration, recalibrated
from .schema import check, from_dict, normalize, to_dict
from .tap_stats import view

DEEP_FORMAT_VERSION = 1
CONFIG_FILE = "adapter_config.json"          # PEFT's names (files/adapter.py uses the same)
WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
DEEP_FOLDER = CheckedFolder("adapter", CONFIG_FILE, {WEIGHTS_FILE: "weights_sha256"}, DEEP_FORMAT_VERSION,
                            remedy="restore the adapter folder or retrain the adapter", optional=True)
KIND = folder_kind("adapter folder", CONFIG_FILE, (WEIGHTS_FILE,))


@dataclass(frozen=True)
class DeepConfig:
    """A deep adapter: PEFT's LoraConfig fields, then edgelora's (saved as sorted, indented JSON)."""
    backbone_fingerprint: str                 # Manifest.identity of the bundle it was trained on
    target_modules: tuple[str, ...]           # torch module names (PEFT); ONNX names where the bundle has none
    initializers: tuple[str, ...]             # the ONNX weight initializer of each target, in the same order
    weight_shapes: tuple[tuple[int, ...], ...]  # each initializer's ONNX shape (a conv's kernel is in it)
    num_outputs: int
    task: Literal["classification", "regression"]
    r: int = 4
    lora_alpha: float = 8.0                   # scale s = lora_alpha / r
    classes: tuple[str, ...] = ()
    out_scales: tuple[tuple[float, ...], ...] = ()  # per target, the folded batch-norm factor of the export
                                              # (bundle.TorchWeight.out_scale; () = none): B is stored / it
    peft_type: str = "LORA"
    lora_dropout: float = 0.0
    bias: str = "none"
    fan_in_fan_out: bool = False
    init_lora_weights: bool = True
    use_rslora: bool = False
    inference_mode: bool = True
    weights_sha256: str = ""
    format_version: int = DEEP_FORMAT_VERSION
    training: dict[str, Any] = field(default_factory=dict)
    recalibration: Recalibration | None = None  # statistics re-estimated on the device's samples before training

    def __post_init__(self):
        normalize(self)
        check(re.fullmatch("sha256:[0-9a-f]{64}", self.backbone_fingerprint) is not None,
              f"`backbone_fingerprint` should be 'sha256:' + 64 hex digits, found {self.backbone_fingerprint!r}")
        check(self.peft_type == "LORA", f"`peft_type` should be 'LORA', found {self.peft_type!r}")
        check_rank(self.r)   # the skip adapters' checks (core/shape.py); `bias` here is PEFT's string
        check_alpha(self.lora_alpha)
        check(len(self.target_modules) >= 1, "`target_modules` should name at least one module")
        check(len(self.target_modules) == len(self.initializers) == len(set(self.initializers)) == len(self.weight_shapes),
              f"`initializers` should name one distinct ONNX weight per target module ({len(self.target_modules)}), "
              f"found {list(self.initializers)}")
        check(len(self.out_scales) in (0, len(self.initializers)) and all(v != 0 for o in self.out_scales for v in o),
              f"`out_scales` should list one tuple of non-zero factors (or none) per target, found {self.out_scales}")
        check(self.bias == "none" and not self.use_rslora and not self.fan_in_fan_out,
              "edgelora's deep adapters have `bias` 'none', `use_rslora` false and `fan_in_fan_out` false")

    @property
    def scale(self) -> float:
        return self.lora_alpha / self.r


@dataclass
class DeepAdapter:
    """A trained deep adapter: its config and, per ONNX initializer, (A, B) in matrix form."""
    config: DeepConfig
    params: dict[str, tuple[np.ndarray, np.ndarray]]

    @classmethod
    def for_backbone(cls, manifest: Manifest, config: DeepConfig, params: dict) -> DeepAdapter:
        """With the export's folded batch-norm factors (manifest.torch_weights) recorded in the config."""
        found = {w.initializer: tuple(w.out_scale) for w in manifest.torch_weights}
        scales = tuple(found.get(init, ()) for init in config.initializers)
        return cls(dataclasses.replace(config, out_scales=scales if any(scales) else ()), params)

    def out_scale(self, init: str) -> np.ndarray | float:
        """Row vector of the folded batch-norm factor of target `init`'s output channels (1.0: none)."""
        o = self.config.out_scales[self.config.initializers.index(init)] if self.config.out_scales else ()
        return np.asarray(o, np.float32)[None, :] if o else 1.0

    @property
    def flat(self) -> np.ndarray:
        """Every trained value in one float32 vector (A then B per target, in `initializers` order)."""
        return np.concatenate([m.ravel() for init in self.config.initializers for m in self.params[init]])

    @property
    def nbytes(self) -> int:
        """Memory it takes to serve: its factors, and the merged copy of each weight it adapts (float32)."""
        return sum(a.nbytes + b.nbytes for a, b in self.params.values()) + \
            4 * sum(int(np.prod(s)) for s in self.config.weight_shapes)

    def check_backbone(self, manifest: Manifest, where: str = "adapter") -> None:
        """Refuse an adapter that was not trained on this backbone (bound to the bundle, whatever tap statistics
        a view of it gives: files/tap_stats.py)."""
        c = self.config
        manifest = view(recalibrated(manifest, c.recalibration, f"{where}: `recalibration`"), ())
        if c.backbone_fingerprint != manifest.identity:
            what = " re-calibrated with the adapter's `recalibration`" if c.recalibration else ""
            raise ValueError(f"{where} belongs to another backbone: expected fingerprint {manifest.identity} (the "
                             f"bundle's{what}), found {c.backbone_fingerprint}; retrain it on this bundle")
        if (c.num_outputs, c.task) != (manifest.num_outputs, manifest.task):
            raise ValueError(f"{where}: expected a {manifest.task} adapter with {manifest.num_outputs} outputs, "
                             f"found {c.task} with {c.num_outputs}")

    def tensors(self) -> dict[str, np.ndarray]:
        """PEFT's tensors, B divided by a folded batch-norm's factor (bundle.TorchWeight.out_scale)."""
        out = {}
        for module, init in zip(self.config.target_modules, self.config.initializers):
            a, b = self.params[init]
            r, scale = a.shape[1], self.out_scale(init)
            conv = _conv_dims(self.config.weight_shapes[self.config.initializers.index(init)])
            out[f"{PEFT_PREFIX}{module}.lora_A.weight"] = np.ascontiguousarray(a.T.reshape((r,) + conv[0]), np.float32)
            out[f"{PEFT_PREFIX}{module}.lora_B.weight"] = np.ascontiguousarray(
                (b / scale).T.reshape((b.shape[1], r) + conv[1]), np.float32)
        return out

    def save(self, folder: PathLike, *, overwrite: bool = False, extra: dict[str, bytes] | None = None) -> Path:
        """Write config + weights (and `extra` files) into a fresh folder and swap it in (never a half-written
        adapter); an existing `folder` must be an adapter or empty, unless `overwrite`."""
        check_target(folder, KIND, overwrite=overwrite)
        config = from_dict(DeepConfig, {**_document(self.config), "weights_sha256": ""}, "adapter config")
        blob = st_save(self.tensors(), metadata={
            "format": "pt", "config_sha256": DEEP_FOLDER.document_digest(_document(config))})
        written = DEEP_FOLDER.write(folder, _document(config), {WEIGHTS_FILE: blob}, extra)
        self.config = dataclasses.replace(config, weights_sha256=written["weights_sha256"])
        return Path(folder)


def _document(config: DeepConfig) -> dict:
    """The config as saved: `recalibration` only when there is one (files without it read as before)."""
    return {k: v for k, v in to_dict(config).items() if k != "recalibration" or v is not None}


def _conv_dims(shape: tuple[int, ...]) -> tuple[tuple, tuple]:
    """Trailing dims of PEFT's lora_A (C, *k) and lora_B (1,)*len(k) for a conv target; (-1,), () for linear."""
    if len(shape) <= 2:
        return (-1,), ()
    return tuple(shape[1:]), (1,) * (len(shape) - 2)


def torch_module(manifest: Manifest, init: str) -> TorchWeight | None:
    """The torch module whose weight ONNX initializer `init` is (export records it), or None."""
    return next((w for w in manifest.torch_weights if w.initializer == init), None)


def _own_fields(doc: dict) -> dict:
    """The fields DeepConfig knows: PEFT adds many (null or default) when it re-saves a config."""
    names = {f.name for f in dataclasses.fields(DeepConfig)}
    return {k: v for k, v in doc.items() if k in names} if isinstance(doc, dict) else doc


def is_deep(doc: dict) -> bool:
    """Whether an adapter_config.json document is a deep adapter's (PEFT LoRA) rather than a skip adapter's."""
    return isinstance(doc, dict) and doc.get("peft_type") == "LORA"


def load_deep_adapter(folder: PathLike, manifest: Manifest | None = None) -> DeepAdapter:
    """Read and validate a deep adapter folder (and, given a manifest, that it fits that backbone)."""
    cpath, data = DEEP_FOLDER.read_document(folder)
    config = from_dict(DeepConfig, _own_fields(data), str(cpath), optional=("training", "classes", "recalibration"))
    blob = DEEP_FOLDER.read_binary(folder, data, WEIGHTS_FILE)
    where = Path(folder) / WEIGHTS_FILE
    tensors, metadata = parse_safetensors(blob, str(where))
    DEEP_FOLDER.check_vouched(folder, data, metadata.get("config_sha256"), WEIGHTS_FILE)
    expected = {f"{PEFT_PREFIX}{m}.lora_{x}.weight" for m in config.target_modules for x in "AB"}
    if set(tensors) != expected:
        raise ValueError(f"{where}: expected tensors {sorted(expected)}, found {sorted(tensors)}")
    params = {}
    for module, init in zip(config.target_modules, config.initializers):
        a, b = (tensors[f"{PEFT_PREFIX}{module}.lora_{x}.weight"] for x in "AB")
        if a.dtype != np.float32 or b.dtype != np.float32 or a.shape[0] != config.r or b.ndim < 2 \
                or b.shape[1] != config.r or not (np.isfinite(a).all() and np.isfinite(b).all()):
            raise ValueError(f"{where}: tensors of `{module}` should be finite float32 with rank {config.r} "
                             f"(lora_A (r, ...), lora_B (out, r, ...)), found {a.dtype} {a.shape} and {b.dtype} {b.shape}")
        params[init] = (np.ascontiguousarray(a.reshape(config.r, -1).T), b.reshape(b.shape[0], config.r).T.copy())
    adapter = DeepAdapter(config, params)
    for init, (_, b) in params.items():
        b *= adapter.out_scale(init)
    if manifest is not None:
        adapter.check_backbone(manifest, f"adapter {folder}")
    return adapter
