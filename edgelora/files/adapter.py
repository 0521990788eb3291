"""Adapter files: `adapter_config.json` + `adapter_model.safetensors`, in PEFT's folder layout.

Tensors (PEFT orientation, lora.peft_views; float32): `<tap>.lora_A.weight` (r, d_k) and `<tap>.lora_B.weight` (C, r)
per tap, and `bias` (C,) when the adapter learns an output bias. The config records the backbone's
fingerprint and the SHA-256 of the weights file; the weights file's metadata records the SHA-256 of the
config (`config_sha256`, over the config without `weights_sha256`). So a mismatched adapter, or a byte
changed in either file, is refused.
"""
from __future__ import annotations

import dataclasses
import json
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from safetensors.numpy import save as st_save

from ..core.lora import Layout, peft_views, views
from ..core.shape import AdapterShape, check_alpha
from .bundle import TAP_STATISTICS, Manifest
from .checked import CheckedFolder
from .fileio import PathLike
from .outputs import check_target, folder_kind
from .readers import parse_safetensors
from .recalibration import Recalibration, recalibrated
from .schema import check, from_dict, normalize, to_dict
from .tap_stats import chosen, view

ADAPTER_FORMAT_VERSION = 1
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
MAX_WEIGHTS_BYTES = 2 * 1024**3
ADAPTER_KIND = folder_kind("adapter folder", CONFIG_FILE, (WEIGHTS_FILE,))
ADAPTER_FOLDER = CheckedFolder("adapter", CONFIG_FILE, {WEIGHTS_FILE: "weights_sha256"}, ADAPTER_FORMAT_VERSION,
                               remedy="restore the adapter folder or retrain the adapter", optional=True,
                               max_bytes=MAX_WEIGHTS_BYTES)


# bounds far beyond any trained adapter, so that outputs stay finite in float32 (max 3.4e38): a hostile or
# corrupt adapter with finite but huge values would otherwise print NaN losses
MAX_WEIGHT = 1e8
MAX_ALPHA = 1e6


@dataclass(frozen=True, kw_only=True)
class AdapterConfig(AdapterShape):
    """What an adapter is and which backbone it belongs to (saved as sorted, indented JSON): its shape (r, bias:
    core/shape.py; lora_alpha always written), the backbone's taps and outputs, how it was trained."""
    backbone_fingerprint: str                 # Manifest.identity of the bundle it was trained on
    target_taps: tuple[str, ...]              # tap names, in order
    tap_widths: tuple[int, ...]               # d_k per tap
    num_outputs: int                          # C
    task: Literal["classification", "regression"]
    lora_alpha: float = 8.0                   # scale s = lora_alpha / r (explicit in the file, as PEFT's)
    classes: tuple[str, ...] = ()
    weights_sha256: str = ""                  # of adapter_model.safetensors, filled in on save
    format_version: int = ADAPTER_FORMAT_VERSION
    peft_type: str = "SKIP_LORA"
    training: dict[str, Any] = field(default_factory=dict)   # settings, choices and metrics of the run
    recalibration: Recalibration | None = None  # statistics re-estimated on the device's samples (None: the lab's)
    tap_statistics: tuple[str, ...] = ()      # the bundle's tap statistics it reads beside the taps (files/tap_stats.py)

    def __post_init__(self):
        normalize(self)
        check(re.fullmatch("sha256:[0-9a-f]{64}", self.backbone_fingerprint) is not None,
              f"`backbone_fingerprint` should be 'sha256:' + 64 hex digits, found {self.backbone_fingerprint!r}")
        super().__post_init__()   # the shape's checks
        check_alpha(self.lora_alpha, most=MAX_ALPHA)
        check(len(self.target_taps) >= 1, "`target_taps` should name at least one tap")
        check(len(set(self.target_taps)) == len(self.target_taps), f"`target_taps` should be unique, found {self.target_taps}")
        check(len(self.target_taps) == len(self.tap_widths),
              f"`tap_widths` should have one width per tap ({len(self.target_taps)}), found {len(self.tap_widths)}")
        check(all(d >= 1 for d in self.tap_widths), f"`tap_widths` should be positive, found {self.tap_widths}")
        check(self.num_outputs >= 1, f"`num_outputs` should be positive, found {self.num_outputs}")
        check(self.peft_type == "SKIP_LORA", f"`peft_type` should be 'SKIP_LORA', found {self.peft_type!r}")
        check(self.format_version >= 1, f"`format_version` should be >= 1, found {self.format_version}")
        check(all(s in TAP_STATISTICS for s in self.tap_statistics) and
              len(set(self.tap_statistics)) == len(self.tap_statistics),
              f"`tap_statistics` should be distinct names among {TAP_STATISTICS}, found {list(self.tap_statistics)}")

    @functools.cached_property  # built once: it is asked for on every prediction
    def layout(self) -> Layout:
        return Layout(tuple(self.target_taps), tuple(self.tap_widths), self.num_outputs, self.r, self.bias)


@dataclass
class Adapter:
    """A trained adapter: its config and its flat float32 parameter buffer (see lora.views)."""
    config: AdapterConfig
    flat: np.ndarray

    @property
    def params(self) -> dict[str, np.ndarray]:
        return views(self.flat, self.config.layout)

    def check_backbone(self, manifest: Manifest, where: str = "adapter") -> None:
        """Refuse an adapter that was not trained on this backbone (with the adapter's re-calibration, if any)."""
        c = self.config
        manifest = view(recalibrated(manifest, c.recalibration, f"{where}: `recalibration`"), c.tap_statistics,
                        f"{where}: `tap_statistics`")
        if c.backbone_fingerprint != manifest.identity:
            what = " re-calibrated with the adapter's `recalibration`" if c.recalibration else ""
            raise ValueError(f"{where} belongs to another backbone: expected fingerprint {manifest.identity} (the "
                             f"bundle's{what}), found {c.backbone_fingerprint}; retrain it on this bundle")
        have, found = dict(zip(manifest.tap_names, manifest.tap_widths)), dict(zip(c.target_taps, c.tap_widths))
        if (c.target_taps, c.tap_widths) != (manifest.tap_names, manifest.tap_widths):  # every tap, in order
            raise ValueError(f"{where}: expected taps {have} (the backbone's, in order), found {found}")
        if (c.num_outputs, c.task) != (manifest.num_outputs, manifest.task):
            raise ValueError(f"{where}: expected a {manifest.task} adapter with {manifest.num_outputs} outputs, "
                             f"found {c.task} with {c.num_outputs}")

    def tensors(self) -> dict[str, np.ndarray]:
        """The PEFT-oriented tensors written to adapter_model.safetensors (lora.peft_views)."""
        return {k: np.ascontiguousarray(v, np.float32) for k, v in peft_views(self.params, self.config.layout).items()}

    def save(self, folder: PathLike, *, overwrite: bool = False, extra: dict[str, bytes] | None = None) -> Path:
        """Write config + weights (and `extra` files, name -> bytes) into a fresh folder and swap it in: never a
        half-written adapter. An existing `folder` must be an adapter or empty, unless `overwrite` (see
        edgelora.files.outputs)."""
        check_target(folder, ADAPTER_KIND, overwrite=overwrite)
        # normalise first (e.g. lora_alpha 8 -> 8.0) so the digest covers exactly what is written
        config = from_dict(AdapterConfig, {**config_dict(self.config), "weights_sha256": ""}, "adapter config")
        blob = _sorted_metadata(st_save(self.tensors(), metadata={
            "format": "edgelora-skip-lora", "config_sha256": ADAPTER_FOLDER.document_digest(config_dict(config))}))
        written = ADAPTER_FOLDER.write(folder, config_dict(config), {WEIGHTS_FILE: blob}, extra)
        self.config = dataclasses.replace(config, weights_sha256=written["weights_sha256"])
        return Path(folder)


def config_dict(config: AdapterConfig) -> dict:
    """The config as saved: `recalibration` and `tap_statistics` only when there are some (files without them
    read as before)."""
    data = to_dict(config)
    if config.recalibration is None:
        del data["recalibration"]
    if not config.tap_statistics:
        del data["tap_statistics"]
    return data


def layout_for(manifest: Manifest, r: int, bias: bool) -> Layout:
    """The Layout of a rank-r adapter (with or without an output bias) over `manifest`'s taps and outputs."""
    return Layout(manifest.tap_names, manifest.tap_widths, manifest.num_outputs, r, bias)


def adapter_config(manifest: Manifest, r: int, lora_alpha: float, bias: bool, training: dict) -> AdapterConfig:
    """The config of an adapter over `manifest`'s backbone: its taps and task, the adapter's shape, how it was
    trained (settings, choices, metrics)."""
    m = manifest
    return AdapterConfig(backbone_fingerprint=m.identity, target_taps=m.tap_names, tap_widths=m.tap_widths,
                         num_outputs=m.num_outputs, task=m.task, r=r, lora_alpha=float(lora_alpha), bias=bias,
                         classes=m.classes, training=training, tap_statistics=chosen(m))


def _sorted_metadata(blob: bytes) -> bytes:
    """The safetensors file with its metadata keys in sorted order, padded to the same header length:
    safetensors writes them in hash order, and the same adapter must always give the same bytes."""
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    return blob[:8] + text.ljust(n) + blob[8 + n:]


def load_adapter(folder: PathLike, manifest: Manifest | None = None) -> Adapter:
    """Read and fully validate an adapter folder (and, given a manifest, that it fits that backbone).
    An empty `weights_sha256`, or no `config_sha256` in the weights' metadata, is not checked.
    A deep adapter (PEFT LoRA in the backbone's layers, files/deep_adapter.py) is returned as a DeepAdapter."""
    cpath, data = ADAPTER_FOLDER.read_document(folder)
    if isinstance(data, dict) and data.get("peft_type") == "LORA":
        from .deep_adapter import load_deep_adapter
        return load_deep_adapter(folder, manifest)
    config = from_dict(AdapterConfig, data, str(cpath), optional=("training", "recalibration", "tap_statistics"))
    blob = ADAPTER_FOLDER.read_binary(folder, data, WEIGHTS_FILE)
    tensors, metadata = parse_safetensors(blob, str(Path(folder) / WEIGHTS_FILE))
    ADAPTER_FOLDER.check_vouched(folder, data, metadata.get("config_sha256"), WEIGHTS_FILE)
    adapter = Adapter(config, _flat_from_tensors(tensors, config, Path(folder) / WEIGHTS_FILE))
    if manifest is not None:
        adapter.check_backbone(manifest, f"adapter {folder}")
    return adapter


def _flat_from_tensors(tensors: dict, config: AdapterConfig, where: Path) -> np.ndarray:
    layout = config.layout
    found = sum(a.size for a in tensors.values())
    if layout.size > found:  # check before allocating: the config's shapes could be absurd
        raise ValueError(f"{where}: the config declares {layout.size} adapter parameters, the file holds {found}")
    flat = np.zeros(layout.size, np.float32)
    expected = peft_views(views(flat, layout), layout)  # the file's tensors, as views into flat
    if set(tensors) != set(expected):
        raise ValueError(f"{where}: expected tensors {sorted(expected)}, found {sorted(tensors)}")
    for key, dst in expected.items():
        a = tensors[key]
        if a.shape != dst.shape or a.dtype != np.float32:
            raise ValueError(f"{where}: tensor `{key}` should be float32 {dst.shape}, found {a.dtype} {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError(f"{where}: tensor `{key}` contains NaN or Inf")
        if a.size and np.abs(a).max() > MAX_WEIGHT:
            raise ValueError(f"{where}: tensor `{key}` holds {np.abs(a).max():.3g}; expected magnitudes of at most "
                             f"{MAX_WEIGHT:g} (larger ones overflow float32 arithmetic); the file is corrupt")
        dst[...] = a
    return flat
