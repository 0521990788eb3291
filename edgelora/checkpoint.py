"""Training checkpoints: a folder with `checkpoint.json` and `checkpoint.safetensors`, swapped in atomically."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from .fileio import PathLike, dumps_json, new_temp_dir, read_json, recover_dir, replace_dir, write_file

CHECKPOINT_FORMAT_VERSION = 1
META_FILE = "checkpoint.json"
ARRAYS_FILE = "checkpoint.safetensors"


def save_checkpoint(folder: PathLike, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """Write meta + arrays into a fresh folder and swap it in (a crash leaves the previous checkpoint)."""
    blob = st_save({k: np.ascontiguousarray(v) for k, v in arrays.items()})
    meta = {**meta, "format_version": CHECKPOINT_FORMAT_VERSION, "arrays_sha256": hashlib.sha256(blob).hexdigest()}
    tmp = new_temp_dir(folder)
    try:
        write_file(tmp / ARRAYS_FILE, blob)
        write_file(tmp / META_FILE, dumps_json(meta))
        replace_dir(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_checkpoint(folder: PathLike) -> tuple[dict, dict[str, np.ndarray]] | None:
    """(meta, arrays) of the checkpoint in `folder`, None if there is none; corruption is an error."""
    folder = Path(folder)
    recover_dir(folder)
    if not (folder / META_FILE).exists():
        return None
    meta = read_json(folder / META_FILE, "checkpoint")
    if not isinstance(meta, dict) or meta.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise ValueError(f"{folder / META_FILE}: expected a checkpoint of format_version "
                         f"{CHECKPOINT_FORMAT_VERSION}; delete the folder to start afresh")
    path = folder / ARRAYS_FILE
    blob = path.read_bytes() if path.is_file() else b""
    if hashlib.sha256(blob).hexdigest() != meta.get("arrays_sha256"):
        raise ValueError(f"{path} is missing or corrupt (checksum mismatch); delete {folder} to start afresh")
    try:
        return meta, st_load(blob)
    except (SafetensorError, ValueError) as e:  # pragma: no cover - the checksum catches this first
        raise ValueError(f"{path} is not a valid safetensors file ({e})") from None
