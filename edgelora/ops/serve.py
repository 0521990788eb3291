"""Serving many adapters over one backbone: one adapter name per request row.

A batch runs the frozen backbone once; rows are grouped by adapter and each group gets its adapter's
skip paths (lora.forward) on the rows' base output and taps. Loaded adapters are kept in an LRU within
a memory budget. Before a row is served, its adapter's `current.json` is stat-ed (at most every
`poll_seconds`): a replaced pointer file means a newly published (or rolled back) version, which is
loaded in place of the old one - no restart, and the backbone is never reloaded. Versions are
immutable folders that appear by atomic rename and carry a weights checksum, so a reader never sees a
half-written adapter; if a new version cannot be loaded, the version already loaded keeps serving.
"""
from __future__ import annotations

import math
import os
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from ..core import lora
from ..core.losses import log_softmax
from ..files.adapter import Adapter
from ..files.data import as_inputs, num_samples
from ..files.deep_adapter import DeepAdapter
from ..files.schema import check, normalize
from ..runtime.backbone import Backbone
from .served import SHARED, LoadedAdapter
from .store import AdapterStore


STACK_MAX_COLUMNS = 96     # a mixed batch of merged adapters runs as one product up to this many columns


@dataclass(frozen=True)
class ServeConfig:
    """How adapters are kept and refreshed."""
    memory_budget: int = 64 * 1024**2            # bytes of adapter weights kept loaded (least recently used go first)
    poll_seconds: float = 1.0                    # stat an adapter's current.json at most this often (0: every request);
                                                 # refresh() checks at once
    missing: Literal["error", "shared"] = "error"  # an adapter with no published version: error, or the shared model
    batch_size: int = 256                        # rows per backbone call

    def __post_init__(self):
        normalize(self)
        check(isinstance(self.memory_budget, int) and self.memory_budget > 0,
              f"`memory_budget` should be a positive number of bytes, found {self.memory_budget!r}")
        check(self.poll_seconds >= 0, f"`poll_seconds` should be >= 0, found {self.poll_seconds}")
        check(self.missing in ("error", "shared"), f"`missing` should be 'error' or 'shared', found {self.missing!r}")
        check(isinstance(self.batch_size, int) and self.batch_size >= 1,
              f"`batch_size` should be a positive integer, found {self.batch_size!r}")


class AdapterServer:
    """Predictions for rows that each name their adapter (None: the shared model without adapter).

    Not thread-safe (its LRU is a plain OrderedDict): use one server per thread, or a lock around calls.
    """

    def __init__(self, backbone: Backbone, store: AdapterStore, config: ServeConfig = ServeConfig()):
        self.backbone, self.store, self.config = backbone, store, config
        self._loaded: OrderedDict[str, LoadedAdapter] = OrderedDict()
        self._pointers: dict[str, str] = {}  # name -> path of its current.json (validated once)
        self._bytes = 0                      # weights held by the loaded adapters
        self._stack = None                   # (key, W, b, entries) of the last mixed batch
        self._width = backbone.num_outputs + sum(backbone.tap_widths) + 1  # of a served row
        self.counts = {"loads": 0, "reloads": 0, "evictions": 0, "failed_reloads": 0}

    # --- public -------------------------------------------------------------------------------------
    def outputs(self, x, names: str | None | Sequence[str | None]) -> np.ndarray:
        """Model outputs (N, C) with each row's adapter; `names` is one name for all rows or one per row."""
        inputs = as_inputs(x, self.backbone.manifest)
        n = num_samples(inputs)
        if names is None or isinstance(names, str):
            entry = self._entry(names)
            if entry.deep:
                return self._session(entry).outputs(inputs, self.config.batch_size)
            if n <= self.config.batch_size and self._bytes <= self.config.memory_budget and entry.backbone is None:
                return entry.forward(self._rows(inputs), self.backbone.num_outputs)
            codes, entries = None, [entry]
        else:
            names = list(names)
            if len(names) != n:
                raise ValueError(f"names: expected one adapter name per row ({n}), found {len(names)}")
            index: dict = {}
            codes = np.array([index.setdefault(name, len(index)) for name in names], np.intp)
            entries = [self._entry(name) for name in index]
        if self._bytes > self.config.memory_budget:
            self._evict(keep={id(e) for e in entries})
        if any(e.backbone is not None for e in entries):
            return self._separately(inputs, codes, entries)
        bs = self.config.batch_size
        if n <= bs:  # the common case: one backbone call, no copy
            return self._deep_rows(self._apply(self._rows(inputs), codes, entries), inputs, codes, entries)
        out = np.empty((n, self.backbone.num_outputs), np.float32)
        for a in range(0, n, bs):
            rows = self._rows({k: v[a:a + bs] for k, v in inputs.items()})
            out[a:a + len(rows)] = self._apply(rows, None if codes is None else codes[a:a + bs], entries)
        return self._deep_rows(out, inputs, codes, entries)

    def predict(self, x, names: str | None | Sequence[str | None]) -> np.ndarray:
        """Class indices (classification) or values (regression)."""
        y = self.outputs(x, names)
        return y.argmax(axis=1) if self.backbone.manifest.task == "classification" else y

    def predict_proba(self, x, names: str | None | Sequence[str | None]) -> np.ndarray:
        if self.backbone.manifest.task != "classification":
            raise ValueError("probabilities need a classification backbone; this one does regression")
        return np.exp(log_softmax(self.outputs(x, names).astype(np.float64))).astype(np.float32)

    def adapter(self, name: str | None) -> Adapter | None:
        """The adapter serving `name` now (None for the shared model), refreshed if a new version is current."""
        return self._entry(name).adapter

    def version(self, name: str) -> int | None:
        """The version of `name` serving now (None: the shared model)."""
        return self._entry(name).version

    def _entry(self, name: str | None) -> LoadedAdapter:
        if name is None:
            return SHARED
        entry = self._loaded.get(name)
        now = time.monotonic()
        if entry is None or now - entry.checked >= self.config.poll_seconds:
            entry = self._refresh(name, entry, now)
        self._loaded.move_to_end(name)
        return entry

    def refresh(self, name: str | None = None) -> None:
        """Check the current pointer of `name` (default: every loaded adapter) at its next use."""
        for key in [name] if name is not None else list(self._loaded):
            if key in self._loaded:
                self._loaded[key].checked = -math.inf

    def stats(self) -> dict:
        return {**self.counts, "loaded": {k: e.version for k, e in self._loaded.items()},
                "bytes": self._bytes, "budget": self.config.memory_budget}

    # --- internals ----------------------------------------------------------------------------------
    def _deep_rows(self, out: np.ndarray, inputs: dict, codes: np.ndarray | None, entries: list[LoadedAdapter]) -> np.ndarray:
        """`out` with the rows of deep adapters replaced by their own session's outputs (a deep adapter
        changes the backbone's layers: its rows need their own backbone pass)."""
        for code, entry in enumerate(entries):
            if entry.deep:
                mine = np.ones(len(out), bool) if codes is None else codes == code
                if mine.any():
                    out = out if out.flags.writeable and out.base is None else out.copy()
                    out[mine] = self._session(entry).outputs({k: v[mine] for k, v in inputs.items()},
                                                             self.config.batch_size)
        return out

    def _session(self, entry: LoadedAdapter):
        if entry.session is None:
            from ..runtime.deep_session import DeepSession
            entry.session = DeepSession(self.backbone, entry.adapter)
        return entry.session

    def _rows(self, inputs: dict, backbone: Backbone | None = None) -> np.ndarray:
        """Served rows [y0 | taps | 1] (n, C + D + 1): the backbone's rows written straight into a buffer
        whose constant last column lets each adapter's bias sit in its folded matrix (lora.folded)."""
        b = backbone or self.backbone    # an adapter's own: its width may differ (tap statistics)
        r = np.empty((num_samples(inputs), self._width if b is self.backbone else
                      b.num_outputs + sum(b.tap_widths) + 1), np.float32)
        r[:, -1] = 1.0
        b.rows(inputs, validated=True, out=r[:, :-1])
        return r

    def _separately(self, inputs: dict, codes: np.ndarray | None, entries: list[LoadedAdapter]) -> np.ndarray:
        """Outputs when some adapter runs over its own backbone (re-calibrated, or other tap statistics): each
        adapter's rows through the backbone it was trained with, in batches."""
        n, c, bs = num_samples(inputs), self.backbone.num_outputs, self.config.batch_size
        codes = np.zeros(n, np.intp) if codes is None else codes
        out = np.empty((n, c), np.float32)
        for code, entry in enumerate(entries):
            idx = np.flatnonzero(codes == code)
            if entry.deep and len(idx):
                out[idx] = self._session(entry).outputs({k: v[idx] for k, v in inputs.items()}, bs)
                continue
            for a in range(0, len(idx), bs):
                part = idx[a:a + bs]
                out[part] = entry.forward(self._rows({k: v[part] for k, v in inputs.items()}, entry.backbone), c)
        return out

    def _apply(self, rows: np.ndarray, codes: np.ndarray | None, entries: list[LoadedAdapter]) -> np.ndarray:
        """Each row's adapter on its backbone row [y0 | taps | 1]."""
        c = self.backbone.num_outputs
        if codes is None or len(entries) == 1:
            return entries[0].forward(rows, c)
        n = len(rows)
        if len(entries) * c <= STACK_MAX_COLUMNS and all(e.M is not None or e.adapter is None for e in entries):
            # few small adapters: one product with their matrices side by side, then each row picks its
            # own adapter's C columns (cheaper than a group-by, whose cost is numpy call overhead)
            return (rows @ self._stacked(entries, rows.shape[1], c)).reshape(n, len(entries), c)[np.arange(n), codes]
        order = np.argsort(codes, kind="stable")    # group rows by adapter: each adapter runs once
        ends = np.cumsum(np.bincount(codes, minlength=len(entries)))
        sorted_rows = rows[order]
        out = np.empty((n, c), np.float32)
        start = 0
        for code, end in enumerate(ends):
            if end > start:
                out[order[start:end]] = entries[code].forward(sorted_rows[start:end], c)
            start = end
        return out

    def _stacked(self, entries: list[LoadedAdapter], width: int, c: int) -> np.ndarray:
        """[M_1 | ... | M_G] (C+D+1, G C) of these entries (the last combination is kept); the shared
        model's block is [I; 0; 0]."""
        key = tuple(id(e) for e in entries)
        if self._stack is None or self._stack[0] != key:
            M = np.zeros((width, len(entries) * c), np.float32)
            for g, e in enumerate(entries):
                M[:, g * c:(g + 1) * c] = e.M if e.M is not None else np.eye(width, c, dtype=np.float32)
            self._stack = (key, M, entries)  # holding `entries` keeps their ids from being reused
        return self._stack[1]

    def _refresh(self, name: str, entry: LoadedAdapter | None, now: float) -> LoadedAdapter:
        path = self._pointers.get(name)
        if path is None:
            path = self._pointers[name] = str(self.store.pointer_path(name))  # validates the name
        for attempt in range(2):  # a version deleted between reading the pointer and loading it: read again
            try:
                st = os.stat(path)
            except FileNotFoundError:
                return self._no_version(name, now)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            if entry is not None and entry.stamp == stamp:
                entry.checked = now
                return entry
            try:
                version = self.store.current(name)
                if version is None:
                    return self._no_version(name, now)
                if entry is not None and entry.version == version:
                    adapter = entry.adapter
                else:
                    adapter = self.store.load(name, version, self.backbone.manifest)
                    self.counts["reloads" if entry is not None else "loads"] += 1
            except (FileNotFoundError, ValueError) as e:
                if attempt == 0 and isinstance(e, FileNotFoundError):
                    continue
                if entry is None or entry.adapter is None:
                    raise
                self.counts["failed_reloads"] += 1
                warnings.warn(f"adapter {name!r}: cannot load the new current version ({e}); "
                              f"v{entry.version} keeps serving")
                entry.checked = now
                return entry
            self._forget(name)
            own = self.backbone.for_adapter(adapter.config) if adapter is not None else self.backbone
            entry = LoadedAdapter(version, adapter, stamp, now, int(adapter.nbytes if isinstance(adapter, DeepAdapter)
                                                              else adapter.flat.nbytes),
                            own if own is not self.backbone else None)
            self._loaded[name] = entry
            self._bytes += entry.nbytes
            return entry
        raise AssertionError("unreachable")  # pragma: no cover

    def _no_version(self, name: str, now: float) -> LoadedAdapter:
        if self.config.missing == "error":
            if not self.store.exists(name):
                raise FileNotFoundError(f"no adapter named {name!r} in store {self.store.root} "
                                        f"(adapters: {self.store.names()})")
            raise FileNotFoundError(f"adapter {name!r} has no published version yet; serve it with "
                                    f"missing='shared' to use the shared model until it has one")
        self._forget(name)
        entry = LoadedAdapter(None, None, (), now, 0)
        self._loaded[name] = entry
        return entry

    def _evict(self, keep: set) -> None:
        """Drop least recently used adapters until the loaded ones fit the budget (never those of the
        request being served, `keep` = their ids)."""
        for name, entry in list(self._loaded.items()):
            if self._bytes <= self.config.memory_budget:
                break
            if id(entry) not in keep:
                self._forget(name)
                self.counts["evictions"] += 1

    def _forget(self, name: str) -> None:
        entry = self._loaded.pop(name, None)
        if entry is not None:
            self._bytes -= entry.nbytes
