"""Skip-Cache: the frozen backbone's outputs per sample, computed once, in RAM or on disk.

A row holds [y0 | tap_1 | ... | tap_K] for one sample, keyed by a hash of the sample's input bytes.
On disk (`directory`), one folder per (backbone identity, dtype) holds the rows in checked, append-only
files (edgelora.runtime.cache_rows): whatever fails its check is dropped, with a warning, and recomputed
on the next miss.
"""
from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
import time
import weakref
from pathlib import Path

import numpy as np

from ..core.bookkeeping import BUDGET_SHARE, check_budget, need
from ..files.data import as_inputs, num_samples
from ..files.fileio import PathLike
from ..files.memory import Pager, cap_arenas, release
from ..files.outputs import folder_kind
from .backbone import Backbone, NonFiniteError
from .cache_index import KeyIndex, key_array
from .cache_rows import CACHE_FORMAT_VERSION, KEY_BYTES, DiskRows, RamRows

FILL_CHUNK = 256  # samples per step of a fill: bounds its temporaries (inputs + rows: 1.2 MB for the fan MLP)


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


def folder_name(identity: str, dtype: str) -> str:
    """The sub-folder of a cache directory holding one backbone's rows in one storage dtype."""
    return f"{identity.split(':')[1][:16]}-{dtype}"


CACHE_FOLDER = r"[0-9a-f]{16}-(float32|float16)"  # folder_name's pattern
CACHE_DIR_KIND = folder_kind("cache directory", (), pattern=CACHE_FOLDER, container=True)


def cache_folders(directory: PathLike) -> list[str]:
    """Names of the sub-folders of `directory` that are Skip-Caches (named as folder_name, with meta.json)."""
    return sorted(p.name for p in Path(directory).iterdir()
                  if p.is_dir() and re.fullmatch(CACHE_FOLDER, p.name) and (p / "meta.json").is_file())


class SkipCache:
    """Per-sample cache of base output and taps for one backbone (Skip2-LoRA's Skip-Cache)."""

    def __init__(self, backbone: Backbone, directory: PathLike | None = None, dtype: str = "float32",
                 memory_budget: int | None = None):
        if dtype not in ("float32", "float16"):
            raise ValueError(f"cache `dtype` should be 'float32' or 'float16', found {dtype!r}")
        if memory_budget is not None and (not isinstance(memory_budget, int) or memory_budget <= 0):
            raise ValueError(f"`memory_budget` should be a positive number of bytes, found {memory_budget!r}")
        if memory_budget is not None:
            cap_arenas()  # each new thread's malloc arena would reserve 64 MB of address space (files/memory.py)
        self.backbone, self.dtype, self.memory_budget = backbone, np.dtype(dtype), memory_budget
        self.y0_width = backbone.num_outputs
        self.width = self.y0_width + sum(backbone.tap_widths)
        self.directory = Path(directory) if directory is not None else None
        self._tmp: weakref.finalize | None = None    # removes the spill folder with the cache (or at exit)
        self.hits = self.misses = 0
        self.fill_seconds = 0.0
        self._store = self._disk_store(self.directory) if self.directory is not None else \
            RamRows(self.width, self.dtype)
        keys = self._store.stored_keys()
        self._index = KeyIndex(keys)
        release(keys)   # an on-disk cache's keys file, read once

    def _disk_store(self, root: Path) -> DiskRows:
        meta = {"format_version": CACHE_FORMAT_VERSION, "fingerprint": self.backbone.identity, "dtype": self.dtype.name,
                "y0_width": self.y0_width, "tap_widths": list(self.backbone.tap_widths)}
        return DiskRows(root / folder_name(self.backbone.identity, self.dtype.name), meta, self.dtype)

    @property
    def values(self) -> np.ndarray:
        """All cached rows, (rows, C + sum d_k) in the storage dtype (a memmap when on disk)."""
        return self._store.values

    def __len__(self) -> int:
        return len(self._index)

    def rows(self, x, validated: bool = False, keys: list[bytes] | None = None) -> np.ndarray:
        """Row index of each sample of `x`, running the backbone only on samples not cached yet. `keys`: the
        samples' sample_keys when the caller already has them (they are not hashed again)."""
        inputs = x if validated else as_inputs(x, self.backbone.manifest)
        keys = key_array(sample_keys(inputs) if keys is None else keys)
        missing = np.flatnonzero(self._index.find(keys) < 0)
        first = np.unique(keys[missing], axis=0, return_index=True)[1]  # a sample repeated in x is filled once
        new = missing[np.sort(first)]
        self.misses += len(new)
        self.hits += len(keys) - len(new)
        if len(new):
            self._fill(inputs, keys[new], new)
        return self._index.find(keys)

    def check_budget(self, inputs: dict[str, np.ndarray], targets: np.ndarray) -> None:
        """Refuse (ValueError, one line) a fine-tune of these checked samples whose per-sample bookkeeping would
        exceed its share of the memory budget (core/bookkeeping.py), before the fill. The key index is counted
        at its size after the fill: with every sample new, unless that alone decides and some rows are cached
        already; then the samples not cached yet are counted (hashed once more, a pass without the backbone)."""
        n, budget = num_samples(inputs), self.memory_budget
        rows = len(self) + n
        if budget is not None and len(self) and BUDGET_SHARE * need(n, targets, rows) > budget >= \
                BUDGET_SHARE * need(n, targets, len(self)):
            rows = len(self) + self._new_samples(inputs)
        check_budget(n, targets, rows, budget)

    def _new_samples(self, inputs: dict[str, np.ndarray]) -> int:
        """How many samples of `inputs` are not cached (at most: a sample repeated far apart counts twice)."""
        n, new, step = num_samples(inputs), 0, 16 * FILL_CHUNK
        pagers = [Pager(v, self.memory_budget and self.memory_budget // 4) for v in inputs.values()]
        for a in range(0, n, step):
            keys = key_array(sample_keys({k: v[a:a + step] for k, v in inputs.items()}))
            new += len(np.unique(keys[self._index.find(keys) < 0], axis=0))
            for p in pagers:   # a mapped data file's pages read so far given back
                p.read(a, min(a + step, n))
        return new

    def reserve(self, extra: int) -> None:
        """Room for up to `extra` more rows in RAM before a fill given in parts (FeatureSource.from_cache), so
        that no part copies the rows before it; nothing when they would go to disk. Rows reserved and never
        filled are never touched: they take address space, not memory."""
        nbytes = (len(self) + extra) * self.width * self.dtype.itemsize   # (not bookkeeping.need: the rows)
        if not self._store.on_disk and (self.memory_budget is None or nbytes <= self.memory_budget):
            self._store.reserve(extra)

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(y0 (n, C), taps (n, D)) as float32 for the given rows."""
        v = self._store.values[rows].astype(np.float32, copy=False)
        return v[:, :self.y0_width], v[:, self.y0_width:]

    def _fill(self, inputs: dict, keys: np.ndarray, idx: np.ndarray) -> None:
        start = time.perf_counter()
        self._maybe_spill(len(keys))
        if not self._store.on_disk:
            self._store.reserve(len(keys))
        step = FILL_CHUNK if self.memory_budget is None else \
            max(1, min(FILL_CHUNK, self.memory_budget // (4 * self.width * 4)))  # a step's float32 rows <= budget / 4
        for a in range(0, len(keys), step):
            sel = idx[a:a + step]
            try:
                rows = self.backbone.rows({k: v[sel] for k, v in inputs.items()}, validated=True)
            except NonFiniteError as e:
                raise e.within(sel) from None
            if self.dtype == np.float16 and np.abs(rows).max() > np.finfo(np.float16).max:
                raise ValueError(f"backbone outputs exceed the float16 range (max |value| "
                                 f"{float(np.abs(rows).max()):.3g} > 65504); use a float32 cache")
            stored = rows.astype(self.dtype, copy=False)
            chunk = keys[a:a + step]
            self._store.append(chunk, stored)
            self._index.add(chunk, len(self._index))
        self.fill_seconds += time.perf_counter() - start

    def _maybe_spill(self, extra: int) -> None:
        """Move an in-RAM cache to disk when it would outgrow the memory budget."""
        need = (len(self) + extra) * self.width * self.dtype.itemsize
        if self._store.on_disk or self.memory_budget is None or need <= self.memory_budget:
            return
        folder = tempfile.mkdtemp(prefix="edgelora-cache-")   # removed silently: TemporaryDirectory's own
        self._tmp = weakref.finalize(self, shutil.rmtree, folder, ignore_errors=True)  # finalizer warns
        old = self._store
        self._store = self._disk_store(Path(folder))
        if len(self._index):
            self._store.append(self._index.in_row_order(), old.values)

    def clear(self) -> None:
        """Forget every cached row (and delete the on-disk files of this backbone and dtype)."""
        if self._store.on_disk:
            shutil.rmtree(self._store.path, ignore_errors=True)
            self._store = self._disk_store(self._store.path.parent)
        else:
            self._store = RamRows(self.width, self.dtype)
        self._index = KeyIndex()

    def stats(self) -> dict:
        """Hits, misses, rows, bytes of cached values, where they live, time spent filling."""
        return {"hits": self.hits, "misses": self.misses, "rows": len(self),
                "bytes": len(self) * self.width * self.dtype.itemsize, "dtype": self.dtype.name,
                "on_disk": self._store.on_disk, "path": str(self._store.path) if self._store.on_disk else None,
                "repaired_rows": getattr(self._store, "repaired", 0),
                "discarded_bytes": getattr(self._store, "cut_bytes", 0), "fill_seconds": self.fill_seconds}
