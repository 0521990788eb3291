"""Backbone bundle: a folder holding the frozen ONNX backbone and its JSON manifest (its parts: manifest_parts.py)."""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import mmap
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .fileio import PathLike, dumps_json, write_folder
from .formats import check_version, digest
from .manifest_parts import (FEATURE_MAP_POOLINGS, INPUT_DTYPES, POOLINGS, TAP_STATISTICS,  # noqa: F401
                             InputSpec, NormSpec, OutputSpec, Standardize, TapSpec, TapStatistic, TorchWeight,
                             as_preprocess)
from .outputs import check_target, folder_kind
from .onnx_refs import external_locations
from .readers import read_bounded, read_json, safe_child
from .schema import check, from_dict, to_dict

BUNDLE_FORMAT_VERSION = 1
MANIFEST_FILE = "edgelora_bundle.json"
MODEL_FILE = "backbone.onnx"
MANIFEST_OPTIONAL = ("classes", "preprocess", "producer", "checksum", "external_data", "normalization",
                     "recalibration_model", "torch_weights", "tap_statistics")  # top-level fields the JSON may leave out
MAX_EXTERNAL_BYTES = 16 * 1024**3  # one external-data file; read into memory, so the device's RAM bounds it too
RECALIBRATION_FILE = "recalibrate.onnx"  # the backbone plus each batch-norm layer's moments output
BUNDLE_KIND = folder_kind("bundle folder", MANIFEST_FILE, pattern=r"[^/]+\.onnx(\.data)?")


@dataclass(frozen=True)
class Manifest:
    """Everything the device needs to know about a backbone, saved as MANIFEST_FILE."""
    format_version: int
    fingerprint: str                            # "sha256:<hex>" of the ONNX file
    inputs: tuple[InputSpec, ...]
    output: OutputSpec
    taps: tuple[TapSpec, ...]
    task: Literal["classification", "regression"]
    classes: tuple[str, ...] = ()               # class names (classification), len == output.width
    model_file: str = MODEL_FILE
    preprocess: dict[str, Standardize] = field(default_factory=dict)  # input name -> (x - mean) / std
    opset: int = 17
    producer: dict[str, str] = field(default_factory=dict)           # tool and version that wrote it
    checksum: str = ""                          # "sha256:<hex>" of this manifest with checksum ""; "" = unchecked
    external_data: dict[str, str] = field(default_factory=dict)  # file beside the ONNX file -> its SHA-256 (hex)
    normalization: tuple[NormSpec, ...] = ()    # batch-norm layers a device may re-calibrate, in call order
    recalibration_model: dict[str, str] = field(default_factory=dict)  # {"file", "fingerprint"} of the ONNX model
                                                # with the moments outputs (kept out of the served one: speed)
    torch_weights: tuple[TorchWeight, ...] = ()  # ONNX weight initializers -> torch module names (deep adapters)
    tap_statistics: tuple[TapStatistic, ...] = ()  # further statistics of feature-map taps (docs/taps.md)

    def __post_init__(self):
        check(self.format_version >= 1, f"`format_version` should be >= 1, found {self.format_version}")
        check(re.fullmatch("sha256:[0-9a-f]{64}", self.fingerprint) is not None,
              f"`fingerprint` should be 'sha256:' + 64 hex digits, found {self.fingerprint!r}")
        check(len(self.inputs) >= 1, "`inputs` should list at least one input")
        check(len(self.taps) >= 1, "`taps` should list at least one tap")
        check_tap_names([t.name for t in self.taps])
        if self.task == "classification":
            check(len(self.classes) == self.output.width,
                  f"`classes` should name {self.output.width} classes (output width), found {len(self.classes)}")
        check(not self.recalibration_model or sorted(self.recalibration_model) == ["file", "fingerprint"],
              f"`recalibration_model` should have keys ['file', 'fingerprint'], found {sorted(self.recalibration_model)}")
        unknown = sorted(set(self.preprocess) - {i.name for i in self.inputs})
        check(not unknown, f"`preprocess` names unknown input(s) {unknown}; the inputs are "
                           f"{[i.name for i in self.inputs]}")
        for name, sha in self.external_data.items():
            check(re.fullmatch("[^/\\\\\x00]+", name) is not None and name not in (".", "..", self.model_file),
                  f"`external_data`: expected plain file names beside {self.model_file}, found {name!r}")
            check(re.fullmatch("[0-9a-f]{64}", sha) is not None,
                  f"`external_data` {name!r}: expected a SHA-256 of 64 hex digits, found {sha!r}")
        self._check_statistics()

    def _check_statistics(self) -> None:
        """Each tap statistic describes a tap pooled to channel means, once, in an output of its own; a std has
        the tap's width, a whole map a multiple of it."""
        taps = {t.name: t for t in self.taps}
        extra = {f"{s.tap}:{s.statistic}" for s in self.tap_statistics}   # a view's skip paths (files/tap_stats.py)
        outputs = [self.output.name] + [t.output for t in self.taps if t.name not in extra]
        seen = set()
        for s in self.tap_statistics:
            where = f"`tap_statistics` entry {s.tap}:{s.statistic}"
            tap = taps.get(s.tap)
            check(tap is not None, f"{where}: names no tap; expected one of {list(taps)}")
            check(tap.pooling == "global_avg", f"{where}: expected a tap pooled by `global_avg` (channel means), "
                                               f"found pooling {tap.pooling!r}")
            check((s.tap, s.statistic) not in seen, f"{where}: listed twice")
            seen.add((s.tap, s.statistic))
            check(s.output not in outputs, f"{where}: output `{s.output}` is already the output of another tap "
                                           f"or statistic")
            outputs.append(s.output)
            want = "equal to" if s.statistic == "std" else "a multiple of"
            check(s.width == tap.width if s.statistic == "std" else s.width % tap.width == 0,
                  f"{where}: `width` should be {want} the tap's width {tap.width}, found {s.width}")

    @property
    def tap_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.taps)

    @property
    def tap_widths(self) -> tuple[int, ...]:
        return tuple(t.width for t in self.taps)

    @property
    def num_outputs(self) -> int:
        return self.output.width

    @functools.cached_property  # hashes the preprocessing constants: computed once per manifest
    def identity(self) -> str:
        """'sha256:<hex>' over the ONNX fingerprint and every manifest field that changes what the backbone
        computes (inputs, output, taps, preprocess, task): caches and adapters are bound to this, so a
        re-export with new standardisation constants never reuses stale rows or mismatched adapters."""
        keys = ("fingerprint", "inputs", "output", "taps", "preprocess", "task") + \
            (("external_data",) if self.external_data else ()) + \
            (("normalization",) if self.normalization else ()) + \
            (("tap_statistics",) if self.tap_statistics else ())   # a bundle without these keeps its identity
        what = {k: to_dict(self)[k] for k in keys}
        return digest(dumps_json(what), tagged=True)


def check_tap_names(names: list[str], known=None, expected: str = "") -> None:
    """Refuse tap names that repeat or, when `known` is given, are not in it (saying what was `expected`):
    a manifest's taps, and the taps asked of an export (ONNX tensors, PyTorch modules)."""
    unknown = [n for n in names if known is not None and n not in known]
    if unknown:
        raise ValueError(f"unknown tap(s) {unknown}: expected {expected}")
    if len(set(names)) != len(names):
        raise ValueError(f"tap names should be unique, found {names}")


def manifest_dict(manifest: Manifest) -> dict:
    """The manifest as JSON-ready dict; `external_data`, `normalization`, `recalibration_model`,
    `torch_weights` and `tap_statistics` only when there is some, so a bundle without them reads (and
    checksums) exactly as before those fields existed."""
    data = to_dict(manifest)
    for key in ("external_data", "normalization", "recalibration_model", "torch_weights", "tap_statistics"):
        if not data[key]:
            del data[key]
    return data


def manifest_checksum(manifest: Manifest) -> str:
    """SHA-256 of the manifest's canonical JSON (sorted keys, `checksum` left empty)."""
    return digest(dumps_json(manifest_dict(dataclasses.replace(manifest, checksum=""))), tagged=True)


def with_checksum(manifest: Manifest) -> Manifest:
    return dataclasses.replace(manifest, checksum=manifest_checksum(manifest))


def load_manifest(bundle_dir: PathLike) -> Manifest:
    """Read and validate a bundle's manifest (not the ONNX file; see `verify_bundle`)."""
    folder = Path(bundle_dir)
    if folder.is_file() and folder.suffix.lower() == ".onnx":
        raise ValueError(f"{folder} is an ONNX model, not a bundle folder; make a bundle from it with: "
                         f"edgelora export {folder} --out BUNDLE")
    if not folder.is_dir():
        raise FileNotFoundError(f"bundle not found: expected a folder with {MANIFEST_FILE} and the ONNX "
                                f"backbone at {folder}")
    path = safe_child(folder, MANIFEST_FILE, "bundle manifest")
    data = read_json(path, "bundle manifest")
    check_version(data, BUNDLE_FORMAT_VERSION, str(path))
    manifest = from_dict(Manifest, data, str(path), optional=MANIFEST_OPTIONAL)
    if manifest.checksum and manifest.checksum != manifest_checksum(manifest):
        raise ValueError(f"{path}: the manifest is corrupt or was edited (its content does not match its "
                         f"`checksum` {manifest.checksum}); re-export the bundle, or after checking every field "
                         f"by hand remove `checksum`")
    return manifest


def model_path(bundle_dir: PathLike, manifest: Manifest) -> Path:
    """The ONNX file of a bundle; must be a plain file inside the bundle folder."""
    path = safe_child(bundle_dir, manifest.model_file, "manifest field `model_file`")
    if not path.is_file():
        raise FileNotFoundError(f"bundle {bundle_dir}: ONNX backbone missing, expected {path}")
    return path


def verify_bundle(bundle_dir: PathLike, manifest: Manifest | None = None) -> Manifest:
    """Load the manifest and check the ONNX file and its external-data files against their digests."""
    manifest = manifest or load_manifest(bundle_dir)
    with checked_model(bundle_dir, manifest):
        pass
    return manifest


@contextlib.contextmanager
def checked_model(bundle_dir: PathLike, manifest: Manifest) -> Iterator[tuple[str | bytes, dict[str, bytes]]]:
    """(the ONNX model, {location: bytes} of its checked external-data files) without holding the model in
    memory: the file is opened once and read in 1 MB chunks for its fingerprint, and its external-data entries
    are read through a memory map (only the pages around them are touched). The model is named by the open
    file (/proc/self/fd/N), so whoever opens that path (onnxruntime) reads the very file that was checked, even
    if the bundle's file is replaced meanwhile; where /proc is missing, the model is its checked bytes."""
    if not os.path.isdir("/proc/self/fd"):
        blob = read_model(bundle_dir, manifest)
        yield blob, read_external(bundle_dir, manifest, blob)
        return
    with open(model_path(bundle_dir, manifest), "rb") as f:
        before = os.fstat(f.fileno())
        _check_fingerprint(bundle_dir, manifest, digest(iter(lambda: f.read(1 << 20), b""), tagged=True))
        view = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if before.st_size else b""
        external = read_external(bundle_dir, manifest, view)
        del view  # unmapped once the walk's views are gone (closing it here could fail while they live)
        yield f"/proc/self/fd/{f.fileno()}", external
        after = os.fstat(f.fileno())
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            raise ValueError(f"bundle {bundle_dir}: {manifest.model_file} was written to while it was being "
                             f"loaded; load the bundle again")


def read_model(bundle_dir: PathLike, manifest: Manifest) -> bytes:
    """The ONNX file's bytes, checked against the fingerprint: what is hashed is exactly what is run."""
    blob = model_path(bundle_dir, manifest).read_bytes()
    _check_fingerprint(bundle_dir, manifest, digest(blob, tagged=True))
    return blob


def read_external(bundle_dir: PathLike, manifest: Manifest, blob) -> dict[str, bytes]:
    """{location: bytes} of every external-data file the ONNX model `blob` (bytes or a memory map) uses, each a plain file inside the
    bundle listed in the manifest's `external_data` and matching its SHA-256 there: a model that names a file
    outside the bundle or an unlisted one is refused, so nothing is read from wherever the process runs."""
    try:
        locations = external_locations(blob)
    except ValueError as e:
        raise ValueError(f"bundle {bundle_dir}: {manifest.model_file} is not a readable ONNX model ({e}); "
                         f"re-export the bundle") from None
    files = {}
    for name in locations:
        where = f"bundle {bundle_dir}: {manifest.model_file} keeps tensors in {name!r}"
        if name not in manifest.external_data:
            raise ValueError(f"{where}, which the manifest's `external_data` does not list (it lists "
                             f"{sorted(manifest.external_data)}); expected every external-data file inside the "
                             f"bundle and listed with its SHA-256 - re-export the bundle")
        path = safe_child(bundle_dir, name, f"{where}:")
        files[name] = read_bounded(path, f"external data of bundle {bundle_dir}", MAX_EXTERNAL_BYTES)
        found = digest(files[name])
        if found != manifest.external_data[name]:
            raise ValueError(f"{where}, which does not match the manifest (expected SHA-256 "
                             f"{manifest.external_data[name]}, found {found}); the file is corrupt or was "
                             f"replaced - re-export the bundle")
    return files


def _check_fingerprint(bundle_dir: PathLike, manifest: Manifest, found: str) -> None:
    if found != manifest.fingerprint:
        raise ValueError(f"bundle {bundle_dir}: {manifest.model_file} does not match the manifest "
                         f"(expected fingerprint {manifest.fingerprint}, found {found}); the file is corrupt, "
                         f"truncated or was replaced - re-export the bundle")


def write_bundle(bundle_dir: PathLike, onnx_bytes: bytes, manifest: Manifest, *, overwrite: bool = False,
                 external: dict[str, bytes] | None = None, recalibration_bytes: bytes | None = None) -> Manifest:
    """Write a complete bundle (ONNX + manifest with fingerprint and checksum filled in) in one atomic step.
    `external` holds the external-data files the model names (location -> bytes), listed with their SHA-256;
    `recalibration_bytes`: the recalibration model (RECALIBRATION_FILE) of a manifest with `normalization`.
    An existing `bundle_dir` must be a bundle or empty, unless `overwrite` (see edgelora.files.outputs)."""
    check_target(bundle_dir, BUNDLE_KIND, overwrite=overwrite)
    external = external or {}
    files = dict(external)
    if recalibration_bytes is not None:
        files[RECALIBRATION_FILE] = recalibration_bytes
        manifest = dataclasses.replace(manifest, recalibration_model={
            "file": RECALIBRATION_FILE, "fingerprint": digest(recalibration_bytes, tagged=True)})
    manifest = with_checksum(dataclasses.replace(manifest, fingerprint=digest(onnx_bytes, tagged=True),
                                                 external_data={k: digest(v) for k, v in external.items()}))
    files.update({manifest.model_file: onnx_bytes, MANIFEST_FILE: dumps_json(manifest_dict(manifest))})
    write_folder(bundle_dir, files, "bundle")
    return manifest


def read_recalibration_model(bundle_dir: PathLike, manifest: Manifest) -> bytes:
    """The recalibration model's bytes, checked against the manifest's `recalibration_model` fingerprint."""
    rm = manifest.recalibration_model
    if not rm:
        raise ValueError(f"bundle {bundle_dir}: no recalibration model (the manifest lists no batch-norm layers)")
    path = safe_child(bundle_dir, rm["file"], "manifest field `recalibration_model`")
    if not path.is_file():
        raise FileNotFoundError(f"bundle {bundle_dir}: recalibration model missing, expected {path}")
    blob = path.read_bytes()
    found = digest(blob, tagged=True)
    if found != rm["fingerprint"]:
        raise ValueError(f"bundle {bundle_dir}: {rm['file']} does not match the manifest (expected fingerprint "
                         f"{rm['fingerprint']}, found {found}); the file is corrupt or was replaced - re-export the bundle")
    return blob
