"""Skip-Cache: the frozen backbone's outputs per sample, computed once, in RAM or on disk.

A row holds [y0 | tap_1 | ... | tap_K] for one sample, keyed by a hash of the sample's input bytes.
On disk (`directory`), one folder per (backbone identity, dtype) holds append-only `keys`, `values`
and per-row `crc` files; `meta.json`, replaced atomically after the data is synced, says how many rows
are committed and carries a SHA-256 of its own content. Bytes beyond that count (an interrupted append)
are cut; rows whose CRC fails are dropped; a corrupt `meta.json` drops the whole cache. Whatever was
dropped is recomputed on the next miss, and a warning says so.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import time
import warnings
import zlib
from pathlib import Path

import numpy as np

from ..files.data import as_inputs, num_samples
from ..files.fileio import FileLock, PathLike, atomic_write, dumps_json, read_json
from ..files.targets import folder_kind
from .backbone import Backbone

CACHE_FORMAT_VERSION = 3  # 2: meta.json carries a checksum; 3: bound to Manifest.identity
KEY_BYTES = 16
LOCK_TIMEOUT = 60.0  # seconds to wait while another process opens or appends to the same cache folder
FILL_CHUNK = 2048  # samples per backbone call while filling (bounds the RAM used by a fill)


def sample_keys(inputs: dict[str, np.ndarray]) -> list[bytes]:
    """One 16-byte BLAKE2b key per sample over every input's dtype, shape and bytes."""
    arrays = [np.ascontiguousarray(inputs[name]) for name in sorted(inputs)]
    prefixes = [f"{name}|{a.dtype.str}|{a.shape[1:]}|".encode() for name, a in zip(sorted(inputs), arrays)]
    keys = []
    for i in range(num_samples(inputs)):
        h = hashlib.blake2b(digest_size=KEY_BYTES)
        for prefix, a in zip(prefixes, arrays):
            h.update(prefix)
            h.update(a[i])  # a contiguous row: hashed in place, no copy
        keys.append(h.digest())
    return keys


class CacheConflictError(RuntimeError):
    """Another process appended to the same on-disk cache folder at the same time."""


def folder_name(identity: str, dtype: str) -> str:
    """The sub-folder of a cache directory holding one backbone's rows in one storage dtype."""
    return f"{identity.split(':')[1][:16]}-{dtype}"


CACHE_FOLDER = r"[0-9a-f]{16}-(float32|float16)"  # folder_name's pattern
CACHE_DIR_KIND = folder_kind("cache directory", (), pattern=CACHE_FOLDER, container=True)


def cache_folders(directory: PathLike) -> list[str]:
    """Names of the sub-folders of `directory` that are Skip-Caches (named as folder_name, with meta.json)."""
    return sorted(p.name for p in Path(directory).iterdir()
                  if p.is_dir() and re.fullmatch(CACHE_FOLDER, p.name) and (p / "meta.json").is_file())


class _RamStore:
    """Rows in a growable numpy array."""
    on_disk, path = False, None

    def __init__(self, width: int, dtype: np.dtype):
        self.keys: list[bytes] = []
        self._buf = np.empty((0, width), dtype)

    @property
    def values(self) -> np.ndarray:
        return self._buf[:len(self.keys)]

    def reserve(self, extra: int) -> None:
        """Room for exactly `extra` more rows (a fill knows its size: no doubling, no repeated growth copies)."""
        n = len(self.keys)
        if n + extra > len(self._buf):
            grown = np.empty((n + extra, self._buf.shape[1]), self._buf.dtype)
            grown[:n] = self._buf[:n]
            self._buf = grown

    def append(self, keys: list[bytes], rows: np.ndarray) -> None:
        n = len(self.keys)
        if n + len(rows) > len(self._buf):
            grown = np.empty((max(2 * len(self._buf), n + len(rows), 64), self._buf.shape[1]), self._buf.dtype)
            grown[:n] = self._buf[:n]
            self._buf = grown
        self._buf[n:n + len(rows)] = rows
        self.keys.extend(keys)


class _DiskStore:
    """Rows in memory-mapped files under `path`, committed by an atomic `meta.json` update."""
    on_disk = True

    def __init__(self, path: Path, meta: dict, dtype: np.dtype):
        self.path, self.meta, self.dtype = path, meta, dtype
        self.width = meta["y0_width"] + sum(meta["tap_widths"])
        self.row_bytes = self.width * dtype.itemsize
        path.mkdir(parents=True, exist_ok=True)
        # opening and appending hold an flock, so two processes never write at once; the lock file sits
        # beside the folder, which a rebuild may delete
        self._lock = FileLock(path.with_name(f".{path.name}.lock"), f"cache {path}", LOCK_TIMEOUT)
        self.keys: list[bytes] = []
        self.repaired = self.cut_bytes = 0
        with self._lock:
            self._open()
            self._remove_other_generations()

    def _file(self, kind: str) -> Path:
        return self.path / f"{kind}-{self.meta['generation']}.bin"

    def _open(self) -> None:
        meta_path = self.path / "meta.json"
        links = [p for p in [self.path, *self.path.iterdir()] if p.is_symlink()]
        if links:  # writing through a link could truncate a file outside the cache
            raise ValueError(f"cache {self.path}: {links[0]} is a symbolic link; a cache folder holds only its own "
                             f"files - delete the folder")
        if meta_path.exists():
            try:
                found = read_json(meta_path, "cache meta")
                if found.get("format_version") == CACHE_FORMAT_VERSION or "checksum" in found:
                    if found.pop("checksum", None) != _digest(found):
                        raise ValueError("its checksum does not match its content")
                same = all(found.get(k) == self.meta[k] for k in ("format_version", "fingerprint", "dtype",
                                                                   "y0_width", "tap_widths"))
                count, gen = found["count"], found["generation"]
                if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (count, gen)):
                    raise ValueError(f"`count` {count!r} and `generation` {gen!r} should be integers >= 0")
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                warnings.warn(f"cache {meta_path} is unreadable or corrupt ({e}); rebuilding the whole cache")
                same = False
            if same:
                self.meta.update(count=count, generation=gen)
                self._load_rows(count)
                return
            shutil.rmtree(self.path, ignore_errors=True)
            self.path.mkdir(parents=True)
        self.meta.update(count=0, generation=0)
        self._write([], b"", b"")

    def _remove_other_generations(self) -> None:
        """Files of an older generation: left when a crash fell between a repair's commit and its cleanup."""
        current = {self._file(k).name for k in ("keys", "values", "crc")}
        for p in self.path.glob("*-*.bin"):
            if p.name not in current:
                p.unlink(missing_ok=True)

    def _load_rows(self, count: int) -> None:
        """Check the committed rows' CRCs; rewrite the files without bad rows if any failed."""
        def read(kind: str) -> bytes:
            return self._file(kind).read_bytes() if self._file(kind).exists() else b""
        keys, crcs = read("keys"), read("crc")
        vpath = self._file("values")
        vsize = vpath.stat().st_size if vpath.exists() else 0
        values = np.memmap(vpath, np.uint8, "r") if vsize else np.empty(0, np.uint8)
        rb = self.row_bytes

        def ok(i: int) -> bool:
            key, row, crc = keys[i * KEY_BYTES:(i + 1) * KEY_BYTES], values[i * rb:(i + 1) * rb], crcs[i * 4:i * 4 + 4]
            return len(key) == KEY_BYTES and len(row) == rb and len(crc) == 4 \
                and zlib.crc32(key + row.tobytes()) == int.from_bytes(crc, "little")
        present = max(0, min(count, len(keys) // KEY_BYTES, vsize // rb, len(crcs) // 4))  # a bogus count can't loop
        good = [i for i in range(present) if ok(i)]
        self.repaired = max(0, count) - len(good)
        if self.repaired:
            names = ", ".join(self._file(k).name for k in ("keys", "values", "crc"))
            warnings.warn(f"cache {self.path}: {self.repaired} of {count} rows failed their checksum or were "
                          f"truncated ({names}); they will be recomputed")
        if not self.repaired:
            del values
            for kind, size in (("keys", KEY_BYTES), ("values", rb), ("crc", 4)):
                if self._file(kind).exists() and self._file(kind).stat().st_size > count * size:
                    self.cut_bytes += self._file(kind).stat().st_size - count * size
                    os.truncate(self._file(kind), count * size)  # bytes of an interrupted append
            if self.cut_bytes:
                warnings.warn(f"cache {self.path}: discarded {self.cut_bytes} bytes of an interrupted write "
                              f"(rows never committed); they will be recomputed")
            self.keys = [keys[i * KEY_BYTES:(i + 1) * KEY_BYTES] for i in range(count)]
            self._map()
            return
        # rewrite the good rows into a new generation, switch meta atomically, then drop the old files
        old = [self._file(k) for k in ("keys", "values", "crc")]
        self.meta.update(generation=self.meta["generation"] + 1, count=0)
        self._write([keys[i * KEY_BYTES:(i + 1) * KEY_BYTES] for i in good],
                     b"".join(values[i * rb:(i + 1) * rb].tobytes() for i in good),
                     b"".join(crcs[i * 4:i * 4 + 4] for i in good))
        del values
        for p in old:
            p.unlink(missing_ok=True)

    def _commit(self, keys: list[bytes], rows: bytes, crcs: bytes) -> None:
        with self._lock:
            self._check_unchanged()
            self._write(keys, rows, crcs)

    def _check_unchanged(self) -> None:
        """Appends go at the count read when the folder was opened: refuse if another writer moved it
        since (writing anyway would cut that writer's rows)."""
        path = self.path / "meta.json"
        try:
            found = read_json(path, "cache meta")
            now = (found["count"], found["generation"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            now = None
        if now is not None and now != (self.meta["count"], self.meta["generation"]):
            raise CacheConflictError(f"cache {self.path} was changed by another writer since it was opened "
                                     f"({now[0]} rows now, {self.meta['count']} then); nothing was written - "
                                     f"open the cache again (or use one cache folder per process)")

    def _write(self, keys: list[bytes], rows: bytes, crcs: bytes) -> None:
        n = self.meta["count"]
        meta = {**self.meta, "count": n + len(keys)}
        try:
            for kind, data, size in (("keys", b"".join(keys), KEY_BYTES), ("values", rows, self.row_bytes),
                                     ("crc", crcs, 4)):
                with open(self._file(kind), "r+b" if self._file(kind).exists() else "wb") as f:
                    f.truncate(n * size)  # cut anything an interrupted append left behind
                    f.seek(n * size)
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            atomic_write(self.path / "meta.json", dumps_json({**meta, "checksum": _digest(meta)}))
        except OSError as e:  # nothing is committed: the next open cuts what was appended
            raise OSError(e.errno, f"could not add rows to the cache in {self.path}: {e.strerror or e}; "
                                   f"the rows cached before are kept") from e
        self.meta = meta
        self.keys.extend(keys)
        self._map()

    def _map(self) -> None:
        n = self.meta["count"]
        self._values = None  # drop the old mapping first: two at once would need twice the address space
        self._values = np.memmap(self._file("values"), self.dtype, "r", shape=(n, self.width)) if n else \
            np.empty((0, self.width), self.dtype)

    @property
    def values(self) -> np.ndarray:
        return self._values

    def append(self, keys: list[bytes], rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, self.dtype)
        crcs = b"".join(zlib.crc32(k + r.tobytes()).to_bytes(4, "little") for k, r in zip(keys, rows))
        self._commit(keys, memoryview(rows).cast("B"), crcs)  # no copy of the rows


def _digest(meta: dict) -> str:
    return "sha256:" + hashlib.sha256(dumps_json(meta)).hexdigest()


class SkipCache:
    """Per-sample cache of base output and taps for one backbone (Skip2-LoRA's Skip-Cache)."""

    def __init__(self, backbone: Backbone, directory: PathLike | None = None, dtype: str = "float32",
                 memory_budget: int | None = None):
        if dtype not in ("float32", "float16"):
            raise ValueError(f"cache `dtype` should be 'float32' or 'float16', found {dtype!r}")
        if memory_budget is not None and (not isinstance(memory_budget, int) or memory_budget <= 0):
            raise ValueError(f"`memory_budget` should be a positive number of bytes, found {memory_budget!r}")
        self.backbone, self.dtype, self.memory_budget = backbone, np.dtype(dtype), memory_budget
        self.y0_width = backbone.num_outputs
        self.width = self.y0_width + sum(backbone.tap_widths)
        self.directory = Path(directory) if directory is not None else None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.hits = self.misses = 0
        self.fill_seconds = 0.0
        self._store = self._disk_store(self.directory) if self.directory is not None else \
            _RamStore(self.width, self.dtype)
        self._index = {k: i for i, k in enumerate(self._store.keys)}

    def _disk_store(self, root: Path) -> _DiskStore:
        meta = {"format_version": CACHE_FORMAT_VERSION, "fingerprint": self.backbone.identity, "dtype": self.dtype.name,
                "y0_width": self.y0_width, "tap_widths": list(self.backbone.tap_widths)}
        return _DiskStore(root / folder_name(self.backbone.identity, self.dtype.name), meta, self.dtype)

    @property
    def values(self) -> np.ndarray:
        """All cached rows, (rows, C + sum d_k) in the storage dtype (a memmap when on disk)."""
        return self._store.values

    def __len__(self) -> int:
        return len(self._store.keys)

    def rows(self, x) -> np.ndarray:
        """Row index of each sample of `x`, running the backbone only on samples not cached yet."""
        inputs = as_inputs(x, self.backbone.manifest)
        keys = sample_keys(inputs)
        new = {}
        for i, k in enumerate(keys):
            if k not in self._index and k not in new:
                new[k] = i
        self.misses += len(new)
        self.hits += len(keys) - len(new)
        if new:
            self._fill(inputs, list(new.keys()), np.fromiter(new.values(), np.int64, len(new)))
        return np.fromiter((self._index[k] for k in keys), np.int64, len(keys))

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(y0 (n, C), taps (n, D)) as float32 for the given rows."""
        v = self._store.values[rows].astype(np.float32, copy=False)
        return v[:, :self.y0_width], v[:, self.y0_width:]

    def _fill(self, inputs: dict, keys: list[bytes], idx: np.ndarray) -> None:
        start = time.perf_counter()
        self._maybe_spill(len(keys))
        if not self._store.on_disk:
            self._store.reserve(len(keys))
        step = FILL_CHUNK if self.memory_budget is None else \
            max(1, min(FILL_CHUNK, self.memory_budget // (4 * self.width * 4)))  # a step's float32 rows <= budget / 4
        for a in range(0, len(keys), step):
            sel = idx[a:a + step]
            rows = self.backbone.rows({k: v[sel] for k, v in inputs.items()}, validated=True)
            if self.dtype == np.float16 and np.abs(rows).max() > np.finfo(np.float16).max:
                raise ValueError(f"backbone outputs exceed the float16 range (max |value| "
                                 f"{float(np.abs(rows).max()):.3g} > 65504); use a float32 cache")
            stored = rows.astype(self.dtype, copy=False)
            chunk = keys[a:a + step]
            base = len(self._store.keys)
            self._store.append(chunk, stored)
            self._index.update((k, base + j) for j, k in enumerate(chunk))
        self.fill_seconds += time.perf_counter() - start

    def _maybe_spill(self, extra: int) -> None:
        """Move an in-RAM cache to disk when it would outgrow the memory budget."""
        need = (len(self) + extra) * self.width * self.dtype.itemsize
        if self._store.on_disk or self.memory_budget is None or need <= self.memory_budget:
            return
        self._tmp = tempfile.TemporaryDirectory(prefix="edgelora-cache-")
        old = self._store
        self._store = self._disk_store(Path(self._tmp.name))
        if old.keys:
            self._store.append(old.keys, old.values)

    def clear(self) -> None:
        """Forget every cached row (and delete the on-disk files of this backbone and dtype)."""
        if self._store.on_disk:
            shutil.rmtree(self._store.path, ignore_errors=True)
            self._store = self._disk_store(self._store.path.parent)
        else:
            self._store = _RamStore(self.width, self.dtype)
        self._index = {}

    def stats(self) -> dict:
        """Hits, misses, rows, bytes of cached values, where they live, time spent filling."""
        return {"hits": self.hits, "misses": self.misses, "rows": len(self),
                "bytes": len(self) * self.width * self.dtype.itemsize, "dtype": self.dtype.name,
                "on_disk": self._store.on_disk, "path": str(self._store.path) if self._store.on_disk else None,
                "repaired_rows": getattr(self._store, "repaired", 0),
                "discarded_bytes": getattr(self._store, "cut_bytes", 0), "fill_seconds": self.fill_seconds}
