"""Crash-safe file primitives: atomic writes, directory swaps, bounded reads, hashing."""
from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import json
import math
import os
import shutil
import struct
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np

PathLike = str | os.PathLike
MAX_JSON_BYTES = 16 * 1024 * 1024  # a manifest or config is a few kB; refuse to parse anything huge
MAX_SAFETENSORS_HEADER = 1024 * 1024  # the JSON header of an adapter or checkpoint is a few kB
SAFETENSORS_DTYPES = {"BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16",
                      "F16": "float16", "U32": "uint32", "I32": "int32", "F32": "float32", "U64": "uint64",
                      "I64": "int64", "F64": "float64"}


def sha256_file(path: PathLike) -> str:
    """'sha256:<hex>' of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def fsync_dir(path: PathLike) -> None:
    """Flush a directory entry (new or renamed files) to disk."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def write_file(path: PathLike, data: bytes) -> None:
    """Write and fsync a new file (callers write into a temp folder or rename afterwards)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _temp_name(dst: Path) -> Path:
    """A hidden sibling `.<name>.tmp-<pid>-<random>`; the pid lets a later writer remove it after a crash."""
    return dst.with_name(f".{dst.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def remove_stale_temps(dst: PathLike) -> int:
    """Delete temp siblings of `dst` left by writers that died (killed, power loss); returns how many.

    Only names made by `_temp_name` whose process no longer exists are touched, so a concurrent
    writer's temp file or folder is never removed.
    """
    dst = Path(dst)
    prefix, removed = f".{dst.name}.tmp-", 0
    try:
        names = os.listdir(dst.parent)
    except OSError:
        return 0
    for name in names:
        pid = name[len(prefix):].split("-", 1)[0] if name.startswith(prefix) else ""
        if not pid.isdigit() or _alive(int(pid)):
            continue
        path = dst.parent / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process, or not a pid at all: leave it
        return True
    return True


def atomic_write(path: PathLike, data: bytes) -> None:
    """Replace `path` with `data` so that readers see the old or the new file, never a mix."""
    path = Path(path)
    remove_stale_temps(path)
    tmp = _temp_name(path)
    try:
        write_file(tmp, data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)


def dumps_json(obj: Any) -> bytes:
    """Sorted, indented JSON: stable bytes for the same content."""
    return (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


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


def read_bounded(path: PathLike, what: str, max_bytes: int) -> bytes:
    """The bytes of a regular file, after checking its size (so a huge file is refused, not read)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: expected a file at {path}")
    size = path.stat().st_size
    if size > max_bytes:
        raise ValueError(f"{what} {path} is {size} bytes; expected at most {max_bytes}")
    return path.read_bytes()


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
    spans = []
    for name, info in header.items():
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
        spans.append((offsets[0], offsets[1], name))
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


def new_temp_dir(dst: PathLike) -> Path:
    """A fresh hidden sibling folder of `dst` to build its replacement in."""
    dst = Path(dst)
    _check_folder_target(dst)
    remove_stale_temps(dst)
    tmp = _temp_name(dst)
    tmp.mkdir(parents=True)
    return tmp


def replace_dir(tmp: PathLike, dst: PathLike) -> None:
    """Move the finished folder `tmp` to `dst`; an existing `dst` is swapped out atomically.

    On Linux, renameat2(RENAME_EXCHANGE) swaps the two folders in one step, so `dst` is at every
    instant either the complete old or the complete new folder. Elsewhere the old folder is renamed
    aside first and `recover_dir` puts it back if a crash fell between the two renames.
    """
    tmp, dst = Path(tmp), Path(dst)
    _check_folder_target(dst)
    fsync_dir(tmp)
    if not dst.exists():
        os.rename(tmp, dst)
    elif _exchange(tmp, dst):
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        old = dst.with_name(f".{dst.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(dst, old)
        os.rename(tmp, dst)
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(dst.parent)


def _check_folder_target(dst: Path) -> None:
    """A folder may replace a folder, never a file or a link (the swap would hide the user's file)."""
    if dst.is_symlink() or (dst.exists() and not dst.is_dir()):
        raise ValueError(f"{dst} exists and is not a folder; expected a folder path (nothing was written)")


def write_folder(dst: PathLike, files: dict[str, bytes], what: str, fill: Callable[[Path], None] | None = None) -> Path:
    """Write `files` (name -> bytes) as the folder `dst` in one atomic swap: readers see the old folder
    or the new one, never a mix; on failure (a full disk, say) the old folder is left as it was.
    `fill(tmp)` may first put more into the new folder (e.g. a hard link to a file of the old one)."""
    dst, tmp = Path(dst), None
    try:
        tmp = new_temp_dir(dst)
        if fill is not None:
            fill(tmp)
        for name, data in files.items():
            write_file(tmp / name, data)
        replace_dir(tmp, dst)
    except OSError as e:
        raise OSError(e.errno, f"could not save the {what} to {dst}: {e.strerror or e}; "
                               f"the {what} that was there is unchanged") from e
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dst


class FileLock:
    """An exclusive flock on `path` (released by the OS if the process dies); waits up to `timeout` s."""

    def __init__(self, path: PathLike, what: str, timeout: float = 60.0):
        self.path, self.what, self.timeout, self._file, self._depth = Path(path), what, timeout, None, 0

    def acquire(self) -> "FileLock":
        """Take the lock (re-entrant for this object: nested acquires just count)."""
        if self._depth:
            self._depth += 1
            return self
        f = open(self.path, "a+b")
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._file, self._depth = f, 1
                return self
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    f.close()
                    raise TimeoutError(f"{self.what} is busy: another process has held {self.path} for more "
                                       f"than {self.timeout:g} s") from None
                time.sleep(0.05)

    def release(self) -> None:
        self._depth = max(0, self._depth - 1)
        if self._depth == 0 and self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def recover_dir(dst: PathLike) -> None:
    """Undo a swap interrupted between its two renames (only possible without renameat2)."""
    dst = Path(dst)
    old = dst.with_name(f".{dst.name}.old")
    if not dst.exists() and old.is_dir():
        os.rename(old, dst)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths with Linux renameat2; False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    res = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if res == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"could not swap {a} and {b}: {os.strerror(err)}")
