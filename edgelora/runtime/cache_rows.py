"""Where Skip-Cache rows live: a growable array in RAM, or a checked folder of append-only files on disk.

On disk, one folder per (backbone identity, dtype) holds `keys-G.bin` (16-byte sample keys), `values-G.bin`
(rows in the storage dtype) and `crc-G.bin` (a CRC-32 of each key and row), G the folder's generation.
`meta.json`, replaced atomically after the data is synced, says how many rows are committed and carries
a `checksum` of its own content. On opening, bytes beyond the committed count (an interrupted append)
are cut and rows whose CRC fails are dropped (the good rows are rewritten as a new generation), with a
warning; a corrupt `meta.json` drops the whole folder, with a warning, and one of an older format or
another backbone silently. A `meta.json` of a newer format is refused (edgelora.files.formats).
"""
from __future__ import annotations

import os
import shutil
import warnings
import zlib
from pathlib import Path

import numpy as np

from ..files.fileio import FileLock, atomic_write, dumps_json
from ..files.formats import NewerFormatError, check_version, digest
from ..files.memory import release
from ..files.readers import read_json
from .cache_index import KEY_BYTES

CACHE_FORMAT_VERSION = 3  # 2: meta.json carries a checksum; 3: bound to Manifest.identity
CHECK_ROWS = 4096   # rows whose CRCs are checked between two hand-backs of their mapped pages
LOCK_TIMEOUT = 60.0  # seconds to wait while another process opens or appends to the same cache folder


class CacheConflictError(RuntimeError):
    """Another process appended to the same on-disk cache folder at the same time."""


class RamRows:
    """Rows in a growable numpy array (their keys are in the SkipCache's index only)."""
    on_disk, path = False, None

    def __init__(self, width: int, dtype: np.dtype):
        self.count = 0
        self._buf = np.empty((0, width), dtype)

    @staticmethod
    def stored_keys() -> np.ndarray:
        return np.empty((0, 2), np.uint64)

    @property
    def values(self) -> np.ndarray:
        return self._buf[:self.count]

    def reserve(self, extra: int) -> None:
        """Room for exactly `extra` more rows (a fill knows its size: no doubling, no repeated growth copies)."""
        n = self.count
        if n + extra > len(self._buf):
            grown = np.empty((n + extra, self._buf.shape[1]), self._buf.dtype)
            grown[:n] = self._buf[:n]
            self._buf = grown

    def append(self, keys: np.ndarray, rows: np.ndarray) -> None:
        n = self.count
        if n + len(rows) > len(self._buf):
            grown = np.empty((max(2 * len(self._buf), n + len(rows), 64), self._buf.shape[1]), self._buf.dtype)
            grown[:n] = self._buf[:n]
            self._buf = grown
        self._buf[n:n + len(rows)] = rows
        self.count += len(rows)


class DiskRows:
    """Rows in memory-mapped files under `path`, committed by an atomic `meta.json` update."""
    on_disk = True

    def __init__(self, path: Path, meta: dict, dtype: np.dtype):
        self.path, self.meta, self.dtype = path, meta, dtype
        self.width = meta["y0_width"] + sum(meta["tap_widths"])
        self.row_bytes = self.width * dtype.itemsize
        path.mkdir(parents=True, exist_ok=True)
        # opening and appending hold an flock, so two processes never write at once; the lock file sits
        # beside the folder, which a rebuild may delete
        self._lock = FileLock(path.with_name(f".{path.name}.lock"), f"cache {path}", LOCK_TIMEOUT,
                              read_only_ok=True)
        self.count = 0
        self.repaired = self.cut_bytes = 0
        with self._lock:
            self._open()
            self._remove_other_generations()

    def stored_keys(self) -> np.ndarray:
        """The keys of the committed rows, (count, 2) uint64 in row order: a read-only map of the keys file (read
        once to build the index, its pages are the file's, which files/memory.release hands back)."""
        if not self.count:
            return np.empty((0, 2), np.uint64)
        return np.memmap(self._file("keys"), np.uint64, "r", shape=(self.count, 2))

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
                    if found.pop("checksum", None) != _checksum(found):
                        raise ValueError("its checksum does not match its content")
                check_version(found, CACHE_FORMAT_VERSION, str(meta_path))  # older: rebuilt below, as stale
                same = all(found.get(k) == self.meta[k] for k in ("format_version", "fingerprint", "dtype",
                                                                   "y0_width", "tap_widths"))
                count, gen = found["count"], found["generation"]
                if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (count, gen)):
                    raise ValueError(f"`count` {count!r} and `generation` {gen!r} should be integers >= 0")
            except NewerFormatError:
                raise
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
        self._write(b"", b"", b"")

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
        bad = set()
        for a in range(0, present, CHECK_ROWS):
            bad.update(i for i in range(a, min(a + CHECK_ROWS, present)) if not ok(i))
            release(values)   # the pages checked, given back: a warm 1,000,000-row cache held 680 MB of them
        self.repaired = max(0, count) - (present - len(bad))
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
            self.count = count
            self._map()
            return
        # rewrite the good rows into a new generation, switch meta atomically, then drop the old files
        good = [i for i in range(present) if i not in bad]
        old = [self._file(k) for k in ("keys", "values", "crc")]
        self.meta.update(generation=self.meta["generation"] + 1, count=0)
        self._write(b"".join(keys[i * KEY_BYTES:(i + 1) * KEY_BYTES] for i in good),
                     b"".join(values[i * rb:(i + 1) * rb].tobytes() for i in good),
                     b"".join(crcs[i * 4:i * 4 + 4] for i in good))
        del values
        for p in old:
            p.unlink(missing_ok=True)

    def _commit(self, keys: bytes, rows: bytes, crcs: bytes) -> None:
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

    def _write(self, keys: bytes, rows: bytes, crcs: bytes) -> None:
        """Append rows: their keys, values and CRCs as bytes (KEY_BYTES, row_bytes and 4 per row)."""
        n = self.meta["count"]
        meta = {**self.meta, "count": n + len(keys) // KEY_BYTES}
        try:
            for kind, data, size in (("keys", keys, KEY_BYTES), ("values", rows, self.row_bytes),
                                     ("crc", crcs, 4)):
                with open(self._file(kind), "r+b" if self._file(kind).exists() else "wb") as f:
                    f.truncate(n * size)  # cut anything an interrupted append left behind
                    f.seek(n * size)
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            atomic_write(self.path / "meta.json", dumps_json({**meta, "checksum": _checksum(meta)}))
        except OSError as e:  # nothing is committed: the next open cuts what was appended
            raise OSError(e.errno, f"could not add rows to the cache in {self.path}: {e.strerror or e}; "
                                   f"the rows cached before are kept") from e
        self.meta = meta
        self.count = meta["count"]
        self._map()

    def _map(self) -> None:
        n = self.meta["count"]
        self._values = None  # drop the old mapping first: two at once would need twice the address space
        self._values = np.memmap(self._file("values"), self.dtype, "r", shape=(n, self.width)) if n else \
            np.empty((0, self.width), self.dtype)

    @property
    def values(self) -> np.ndarray:
        return self._values

    def append(self, keys: np.ndarray, rows: np.ndarray) -> None:
        """keys: (k, 2) uint64 (cache_index.key_array); rows: (k, width)."""
        rows, keys = np.ascontiguousarray(rows, self.dtype), np.ascontiguousarray(keys, np.uint64)
        crcs = b"".join(zlib.crc32(k.tobytes() + r.tobytes()).to_bytes(4, "little") for k, r in zip(keys, rows))
        self._commit(keys.tobytes(), memoryview(rows).cast("B"), crcs)  # no copy of the rows


def _checksum(meta: dict) -> str:
    """The meta.json `checksum` over the rest of its content."""
    return digest(dumps_json(meta), tagged=True)
