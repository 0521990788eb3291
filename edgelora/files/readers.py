"""Readers for files that come from outside: bounded sizes, strict JSON, checked safetensors headers,
plain file names. Every error names the file and says what was expected."""
from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from .fileio import PathLike

MAX_JSON_BYTES = 16 * 1024 * 1024  # a manifest or config is a few kB; refuse to parse anything huge
MAX_SAFETENSORS_HEADER = 1024 * 1024  # the JSON header of an adapter or checkpoint is a few kB
SAFETENSORS_DTYPES = {"BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16",
                      "F16": "float16", "U32": "uint32", "I32": "int32", "F32": "float32", "U64": "uint64",
                      "I64": "int64", "F64": "float64"}


def read_json(path: PathLike, what: str, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Parse a JSON file; missing, oversized or malformed files raise errors that name the file."""
    raw = read_bounded(path, what, max_bytes)
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, huge integers, NaN
        raise ValueError(f"{what} {path} is not valid JSON ({e}); the file is corrupt or truncated") from None


def _reject_constant(name: str):
    raise ValueError(f"NaN/Infinity ({name}) is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def check_file(path: PathLike, what: str, max_bytes: int) -> Path:
    """`path`, once it is known to be a regular file of at most `max_bytes` (checked before anything is read)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: expected a file at {path}")
    size = path.stat().st_size
    if size > max_bytes:
        raise ValueError(f"{what} {path} is {size} bytes; expected at most {max_bytes}")
    return path


def read_bounded(path: PathLike, what: str, max_bytes: int) -> bytes:
    """The bytes of a regular file, after checking its size (so a huge file is refused, not read)."""
    return check_file(path, what, max_bytes).read_bytes()


def parse_safetensors(blob: bytes, where: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors, metadata) of a safetensors file's bytes, after checking its header against its size.

    The header (8-byte length + JSON) must declare known dtypes, and byte ranges that match each
    shape and tile the data exactly: a hostile header cannot make us allocate more than the file holds.
    """
    def bad(why: str) -> ValueError:
        return ValueError(f"{where} is not a valid safetensors file ({why}); it is corrupt or truncated")
    if len(blob) < 8:
        raise bad(f"{len(blob)} bytes, too short for a header")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > min(MAX_SAFETENSORS_HEADER, len(blob) - 8):
        raise bad(f"header length {n} exceeds the file ({len(blob)} bytes) or the {MAX_SAFETENSORS_HEADER} limit")
    try:
        header = json.loads(blob[8:8 + n].decode("utf-8"))
    except (ValueError, RecursionError) as e:
        raise bad(f"header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise bad("`__metadata__` should map names to strings")
    data = len(blob) - 8 - n
    spans = [(*_span(name, info, data, bad), name) for name, info in header.items()]
    end = 0
    for a, b, name in sorted(spans):
        if a != end:
            raise bad(f"tensor `{name}` starts at byte {a}, expected {end} (overlapping or gapped data)")
        end = b
    if end != data:
        raise bad(f"tensors cover {end} of {data} data bytes")
    tensors = {}
    for a, b, name in spans:  # safetensors is little-endian, as are the platforms edgelora supports
        dtype = np.dtype(SAFETENSORS_DTYPES[header[name]["dtype"]])
        flat = np.frombuffer(blob[8 + n + a:8 + n + b], dtype)
        tensors[name] = flat.reshape(header[name]["shape"]).copy()
    return tensors, metadata


def _span(name: str, info, data: int, bad) -> tuple[int, int]:
    """The byte range [start, end) of tensor `name` in the data section, after checking its header entry
    (`bad(why)` makes the error)."""
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise bad(f"tensor `{name}`: expected dtype, shape and data_offsets")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in SAFETENSORS_DTYPES:
        raise bad(f"tensor `{name}`: dtype {dtype!r} is not one of {sorted(SAFETENSORS_DTYPES)}")
    if not isinstance(shape, list) or not all(_index(d) for d in shape):
        raise bad(f"tensor `{name}`: shape should be a list of integers >= 0, found {shape!r}"[:200])
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_index(o) for o in offsets) \
            or not offsets[0] <= offsets[1] <= data:
        raise bad(f"tensor `{name}`: data_offsets {offsets!r} outside the {data} data bytes"[:200])
    size = math.prod(shape) * np.dtype(SAFETENSORS_DTYPES[dtype]).itemsize
    if offsets[1] - offsets[0] != size:
        raise bad(f"tensor `{name}`: shape {shape} needs {size} bytes, data_offsets give {offsets[1] - offsets[0]}")
    return offsets[0], offsets[1]


def _index(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def safe_child(folder: PathLike, name: str, what: str) -> Path:
    """`folder/name` for a plain file name; refuse absolute paths, '..', separators and symlinks out."""
    if not isinstance(name, str) or not name or name in {".", ".."} or "/" in name or "\\" in name \
            or "\x00" in name or os.path.isabs(name):
        raise ValueError(f"{what}: expected a plain file name inside {folder}, found {name!r}")
    folder = Path(folder)
    path = folder / name
    if path.is_symlink() or (path.exists() and folder.resolve() not in path.resolve().parents):
        raise ValueError(f"{what}: {path} is a link that points outside {folder}; refusing to follow it")
    return path


def no_links_below(root: PathLike, path: PathLike, what: str) -> Path:
    """`path` (inside `root`), once no folder or file on the way from `root` down to it is a symbolic link:
    what is deleted or replaced there is then inside `root`, never somewhere a link points to."""
    root, path = Path(root), Path(path)
    at = root
    for part in path.relative_to(root).parts:
        at = at / part
        if at.is_symlink():
            raise ValueError(f"{what}: {at} is a symbolic link; refusing to follow it out of {root} "
                             f"(replace the link with the folder or file itself)")
    return path
