"""Where a fine-tune's training rows come from: the FeatureSource, and `prepare`, which builds it.

A FeatureSource gives the backbone outputs (y0, taps) of the fine-tune samples by sample index: from the
Skip-Cache (one contiguous float32 array, or rows read from the on-disk cache per batch when they exceed
the memory budget), or, without a cache (Skip-LoRA), from the backbone on every call; with the taps raw or
standardised; and it says how many rows cross-validation may gather. Both trainers read through it:
train.py (numpy: core/loop.py, core/crossval.py) and onnx_trainer.py (the ONNX training kit).
"""
from __future__ import annotations

import time
from functools import cached_property
from typing import Callable

import numpy as np

from ..core import scaling
from ..core.bookkeeping import compact_labels, index_dtype
from ..files import tap_stats
from ..files.bundle import Manifest
from ..files.data import as_inputs, as_targets, num_samples
from ..files.memory import Pager, release, release_library
from .backbone import Backbone, NonFiniteError
from .cache import SkipCache
from .train_config import TrainConfig, training_split

Read = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # sample indices -> (y0 (n, C), taps (n, D)) float32


class FeatureSource:
    """The fine-tune samples' (y0, taps) by sample index: `features(idx)`. Built by `from_cache` or
    `from_backbone`. The taps are raw: the trainers scale them per batch (core/scaling.scaled)."""

    def __init__(self, read: Read, manifest: Manifest, inputs: dict[str, np.ndarray], *, name: str,
                 cache: SkipCache | None = None, values=None, seconds: float = 0.0, backbone: Backbone | None = None):
        """name: "cache float32", "cache float16" or "backbone every step" (a checkpoint's run key holds it:
        float16 rows train differently); values: the cached rows [y0 | taps] (None without a cache);
        backbone: what computes the rows (the cache's, when cached)."""
        self._read, self.manifest, self.inputs, self.name = read, manifest, inputs, name
        self.cache, self.values, self.seconds = cache, values, seconds
        self.backbone = backbone if backbone is not None or cache is None else cache.backbone
        self.whole = self   # the source this one is a view of (with_statistics)

    @classmethod
    def from_cache(cls, cache: SkipCache, inputs: dict[str, np.ndarray], chunk: int | None = None,
                   progress: Callable[[int], None] | None = None, keys: list[bytes] | None = None) -> FeatureSource:
        """The rows of `inputs` (already checked: files/data.as_inputs) in `cache`, the backbone running on the
        samples not cached yet; each sample is hashed once (its cache key), or not at all when its `keys` are
        given (runtime/cache.sample_keys). progress(samples done) after every `chunk` samples (default: all at once)."""
        start = time.perf_counter()
        n = num_samples(inputs)
        chunk = chunk or n
        rows = np.empty(n, index_dtype(len(cache) + n))   # filled in place: no list of parts copied at the end
        pagers = [Pager(v, cache.memory_budget and cache.memory_budget // 4) for v in inputs.values()]
        cache.reserve(n)
        for a in range(0, n, chunk):
            b = min(a + chunk, n)
            try:
                rows[a:b] = cache.rows({k: v[a:b] for k, v in inputs.items()}, validated=True,
                                       keys=None if keys is None else keys[a:b])
            except NonFiniteError as e:  # name the samples by their place in `inputs`
                raise e.within(np.arange(a, b)) from None
            for p in pagers:   # memory-mapped inputs (larger than the budget): their pages read so far given back
                p.read(a, b)
            if progress:
                progress(b)
        release_library("onnxruntime")   # the backbone's code the fill ran: training reads the cache only
        return cls._cached(cache, inputs, _cached_rows(cache, rows), time.perf_counter() - start)

    @classmethod
    def _cached(cls, cache: SkipCache, inputs: dict[str, np.ndarray], values, seconds: float,
                manifest: Manifest | None = None) -> FeatureSource:
        """manifest: what the rows `values` hold (default: the cache backbone's rows whole)."""
        c = cache.y0_width

        def read(idx):
            v = values[idx]
            return v[:, :c].copy(), v[:, c:]  # y0 (N, C) its own: holding it must not keep the taps' rows alive
        return cls(read, manifest or cache.backbone.manifest, inputs, name=f"cache {cache.dtype.name}", cache=cache,
                   values=values, seconds=seconds)

    @classmethod
    def from_backbone(cls, backbone: Backbone, inputs: dict[str, np.ndarray]) -> FeatureSource:
        """The backbone run on the asked samples at every call (Skip-LoRA without the Skip-Cache)."""
        def read(idx):
            return backbone.features({k: v[idx] for k, v in inputs.items()}, validated=True)
        return cls(read, backbone.manifest, inputs, name="backbone every step", backbone=backbone)

    def __call__(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._read(idx)

    def __len__(self) -> int:
        return num_samples(self.inputs)

    @property
    def static(self) -> bool:
        """The same rows at every call (cached): evaluation sets can be gathered once."""
        return self.cache is not None

    @property
    def lazy(self) -> bool:
        """Rows read from the on-disk cache per batch: they exceed the memory budget."""
        return isinstance(self.values, _LazyRows)

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """The cached rows [y0 | taps] of the samples idx, float32 (the ONNX training kit's input)."""
        return self.values[idx]

    @cached_property
    def standardizer(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, 1/std) of each tap feature over every sample (core/scaling.standardizer)."""
        return scaling.standardizer(self, len(self))

    def subset(self, idx: np.ndarray) -> FeatureSource:
        """The same (cached) source over the samples idx only, numbered 0 .. len(idx) - 1: no sample is read,
        checked or hashed again."""
        assert self.static, "a subset reads the cached rows"
        values = _LazyRows(self.values.values, self.values.rows[idx], self.values.cols,
                                                              self.values.budget) if self.lazy else self.values[idx]
        return FeatureSource._cached(self.cache, {k: v[idx] for k, v in self.inputs.items()}, values, self.seconds,
                                     self.manifest)

    def with_statistics(self, statistics: tuple[str, ...] | None) -> FeatureSource:
        """The same samples over the view reading the tap statistics `statistics` (files/tap_stats.py; None:
        every one offered): columns of these rows, the backbone not run again; itself when it is that view."""
        part = tap_stats.view(self.manifest, statistics, f"bundle of {self.name}")
        if part.identity == self.manifest.identity:
            return self
        self = self.whole    # the rows as the backbone gave them: every statistic the cache holds
        if part.identity == self.manifest.identity:
            return self
        cols = tap_stats.columns(self.manifest, part)
        if self.static:
            values = _LazyRows(self.values.values, self.values.rows, self.values.cols[cols],
                               self.values.budget) if self.lazy else \
                self.values[:, cols]
            out = FeatureSource._cached(self.cache, self.inputs, values, self.seconds, part)
        else:
            c = self.manifest.num_outputs

            def read(idx):
                y0, t = self(idx)
                return y0, t[:, cols[c:] - c]
            out = FeatureSource(read, part, self.inputs, name=self.name, backbone=self.backbone)
        out.whole = self
        return out

    def cv_rows(self, copies: int, cap: int = 0) -> int | None:
        """How many rows cross-validation may gather (core/crossval.select's max_rows): at most `cap` (0: no cap)
        and, when rows are read from disk per batch, few enough that `copies` float32 copies of them stay within
        half the budget; None: all."""
        limits = ([self.cache.memory_budget // (8 * self.cache.width * copies)] if self.lazy else []) + \
            ([cap] if cap else [])
        return min(limits) if limits else None


def prepare(backbone: Backbone, x, y, config: TrainConfig, *, cache: SkipCache | None = None,
            use_cache: bool = True) -> tuple[FeatureSource, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """(features, targets, (train_idx, val_idx)) of a fine-tune on (x, y): the samples checked once against the
    backbone's manifest, split as `config` asks, then read into the Skip-Cache (a new one unless given)."""
    m = backbone.manifest
    inputs = as_inputs(x, m)
    targets = compact_labels(as_targets(y, m, num_samples(inputs)), m.task, m.num_outputs)
    split = training_split(m, targets, config)
    if not use_cache:
        return FeatureSource.from_backbone(backbone, inputs), targets, split
    cache = cache if cache is not None else SkipCache(backbone)
    if cache.backbone.identity != backbone.identity:
        raise ValueError("the cache belongs to another backbone (fingerprints differ)")
    cache.check_budget(inputs, targets)
    return FeatureSource.from_cache(cache, inputs), targets, split


def _cached_rows(cache: SkipCache, rows: np.ndarray) -> np.ndarray:
    """The cache's `rows` as one contiguous float32 array (fast to index every step) when that fits the
    memory budget; otherwise a lazy view that reads rows from the on-disk cache per batch."""
    need = len(rows) * cache.width * 4
    if cache.memory_budget is None or need <= cache.memory_budget:
        values = cache.values
        if values.dtype == np.float32 and not isinstance(values, np.memmap) and len(rows) == len(values) \
                and np.array_equal(rows, np.arange(len(rows))):
            return values  # the cache holds exactly these rows in order: read it in place (only read below)
        found = values[rows].astype(np.float32, copy=False)  # fancy indexing already copied
        release(values)      # an on-disk cache's pages, all read once
        return found
    return _LazyRows(cache.values, rows, budget=cache.memory_budget)


class _LazyRows:
    """values[rows[idx]][:, cols] as float32, without loading every row (memory-budgeted, on-disk cache); the
    mapped pages read are given back to the system whenever they add up to a quarter of the budget."""

    def __init__(self, values: np.ndarray, rows: np.ndarray, cols: np.ndarray | None = None, budget: int | None = None):
        self.values, self.rows, self.budget = values, rows, budget
        self.cols = cols if cols is not None else np.arange(values.shape[1])
        self._pager = Pager(values, budget and budget // 4)

    def __getitem__(self, idx):
        v = self._pager.take(self.rows[idx])
        return (v if len(self.cols) == v.shape[1] else v[:, self.cols]).astype(np.float32, copy=False)
