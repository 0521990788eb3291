"""Training checkpoints: a folder with `checkpoint.json` and `checkpoint.safetensors`, swapped in atomically."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from safetensors.numpy import save as st_save

from .fileio import (
    PathLike,
    dumps_json,
    parse_safetensors,
    read_bounded,
    read_json,
    recover_dir,
    safe_child,
    write_folder,
)

CHECKPOINT_FORMAT_VERSION = 1
META_FILE = "checkpoint.json"
ARRAYS_FILE = "checkpoint.safetensors"
MAX_ARRAYS_BYTES = 2 * 1024**3


def save_checkpoint(folder: PathLike, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """Write meta + arrays into a fresh folder and swap it in (a crash leaves the previous checkpoint)."""
    meta = {**meta, "format_version": CHECKPOINT_FORMAT_VERSION}
    blob = st_save({k: np.ascontiguousarray(v) for k, v in arrays.items()}, metadata={"meta_sha256": _digest(meta)})
    meta["arrays_sha256"] = hashlib.sha256(blob).hexdigest()
    write_folder(folder, {ARRAYS_FILE: blob, META_FILE: dumps_json(meta)}, "checkpoint")


def load_checkpoint(folder: PathLike) -> tuple[dict, dict[str, np.ndarray]] | None:
    """(meta, arrays) of the checkpoint in `folder`, None if there is none; corruption is an error."""
    folder = Path(folder)
    recover_dir(folder)
    mpath = safe_child(folder, META_FILE, "checkpoint")
    if not mpath.exists():
        return None
    meta = read_json(mpath, "checkpoint")
    if not isinstance(meta, dict) or meta.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise ValueError(f"{mpath}: expected a checkpoint of format_version "
                         f"{CHECKPOINT_FORMAT_VERSION}; delete the folder to start afresh")
    path = safe_child(folder, ARRAYS_FILE, "checkpoint arrays")
    blob = read_bounded(path, "checkpoint arrays", MAX_ARRAYS_BYTES) if path.is_file() else b""
    if hashlib.sha256(blob).hexdigest() != meta.get("arrays_sha256"):
        raise ValueError(f"{path} is missing or corrupt (its SHA-256 does not match {META_FILE}); delete {folder} "
                         f"to start afresh")
    arrays, metadata = parse_safetensors(blob, str(path))
    if metadata.get("meta_sha256") != _digest(meta):
        raise ValueError(f"{mpath} is corrupt (it does not match the checksum recorded in {ARRAYS_FILE}); "
                         f"delete {folder} to start afresh")
    return meta, arrays


def _digest(meta: dict) -> str:
    """SHA-256 of the checkpoint's JSON without `arrays_sha256` (stored in the arrays file's metadata)."""
    return hashlib.sha256(dumps_json({k: v for k, v in meta.items() if k != "arrays_sha256"})).hexdigest()
