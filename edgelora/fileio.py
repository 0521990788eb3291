"""Crash-safe file primitives: atomic writes, directory swaps, bounded reads, hashing."""
from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

PathLike = str | os.PathLike
MAX_JSON_BYTES = 16 * 1024 * 1024  # a manifest or config is a few kB; refuse to parse anything huge


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


def atomic_write(path: PathLike, data: bytes) -> None:
    """Replace `path` with `data` so that readers see the old or the new file, never a mix."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
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
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: expected a file at {path}")
    size = path.stat().st_size
    if size > max_bytes:
        raise ValueError(f"{what} {path} is {size} bytes; expected at most {max_bytes}")
    raw = path.read_bytes()
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"{what} {path} is not valid JSON ({e}); the file is corrupt or truncated") from None


def _reject_constant(name: str):
    raise ValueError(f"NaN/Infinity ({name}) is not allowed")


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
    tmp = dst.with_name(f".{dst.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    return tmp


def replace_dir(tmp: PathLike, dst: PathLike) -> None:
    """Move the finished folder `tmp` to `dst`; an existing `dst` is swapped out atomically.

    On Linux, renameat2(RENAME_EXCHANGE) swaps the two folders in one step, so `dst` is at every
    instant either the complete old or the complete new folder. Elsewhere the old folder is renamed
    aside first and `recover_dir` puts it back if a crash fell between the two renames.
    """
    tmp, dst = Path(tmp), Path(dst)
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
