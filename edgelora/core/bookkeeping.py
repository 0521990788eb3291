"""A fine-tune's per-sample bookkeeping: index and label arrays as small as is exact, and what they cost.

Besides the cached rows (which the memory budget already bounds: in RAM, or read from disk per batch), a
fine-tune of N samples holds arrays of N entries for as long as it runs: the Skip-Cache's key index (two 64-bit
halves of each key and its row), the samples' rows in the cache, the labels, the train/validation indices and,
at every epoch, the shuffle's permutation and the shuffled indices. Indices are int32 below 2^31 samples and
labels the smallest integer type holding every class: bytes_per_row (20) per cached row and bytes_per_sample
(17 with one-byte labels) per sample. `check_budget` refuses, before the cache is filled, a fine-tune whose
bookkeeping would not fit in its share of the memory budget.
"""
from __future__ import annotations

import math

import numpy as np

INDEX_LIMIT = 2**31          # up to this many items, indices 0 .. n-1 fit int32
BUDGET_SHARE = 2             # bookkeeping may take 1/BUDGET_SHARE of the budget; the rest is the rows' working set
KEY_INDEX_BYTES = 8 + 8      # a cached row's key halves in the Skip-Cache's index (runtime/cache_index.py)
INDEX_ARRAYS = 4             # per sample: its row in the cache, its train/validation index, the epoch's
                             # permutation and the shuffled indices (core/loop.py)


def index_dtype(n: int) -> np.dtype:
    """The integer dtype of indices into n items: int32 when every index fits, else int64."""
    return np.dtype(np.int32) if n <= INDEX_LIMIT else np.dtype(np.int64)


def label_dtype(num_classes: int) -> np.dtype:
    """The smallest signed integer dtype holding the class indices 0 .. num_classes - 1."""
    for t in (np.int8, np.int16, np.int32):
        if num_classes - 1 <= np.iinfo(t).max:
            return np.dtype(t)
    return np.dtype(np.int64)


def compact_labels(targets: np.ndarray, task: str, num_classes: int) -> np.ndarray:
    """Checked targets with class indices in label_dtype (the same values); regression targets unchanged."""
    if task != "classification":
        return targets
    return targets.astype(label_dtype(num_classes), copy=False)


def bytes_per_row(rows: int) -> int:
    """Bytes of the Skip-Cache's key index per cached row, for a cache of `rows` rows."""
    return KEY_INDEX_BYTES + index_dtype(rows).itemsize


def bytes_per_sample(n: int, targets: np.ndarray) -> int:
    """Bytes of per-sample bookkeeping (besides the key index) of a fine-tune on n samples with these targets."""
    return INDEX_ARRAYS * index_dtype(n).itemsize + targets.itemsize * int(np.prod(targets.shape[1:], dtype=np.int64))


def need(n: int, targets: np.ndarray, rows: int) -> int:
    """Bytes of bookkeeping of a fine-tune on n samples whose cache will hold `rows` rows."""
    return n * bytes_per_sample(n, targets) + rows * bytes_per_row(rows)


def check_budget(n: int, targets: np.ndarray, rows: int, budget: int | None) -> None:
    """A ValueError (one line) when the bookkeeping of n samples, in a cache of `rows` rows, exceeds its share
    of `budget` (bytes; None: no budget), naming the samples, the bytes a sample, the need, the budget and the
    smallest budget that fits."""
    if budget is None:
        return
    total = need(n, targets, rows)
    if total * BUDGET_SHARE <= budget:
        return
    mb = total * BUDGET_SHARE / 2**20
    smallest = math.ceil(mb) if mb >= 10 else math.ceil(mb * 100) / 100   # whole MB, or to 10 kB when small
    older = max(rows - n, 0) * bytes_per_row(rows)    # the index of rows cached by earlier runs
    mine = (total - older) / max(n, 1)
    cached = f"; the Skip-Cache's index of the {rows - n:,} rows cached before: {_mb(older)}" if older else ""
    raise ValueError(f"--memory-budget {budget / 2**20:.3g} MB is too small for {n:,} samples: their bookkeeping "
                     f"needs {_mb(total)} (cache index, labels, indices, the shuffle: {mine:.1f} bytes a sample{cached})"
                     f" and may use at most 1/{BUDGET_SHARE} of the budget (the rest holds the rows being read); use "
                     f"--memory-budget {smallest:g} or more, " + ("fewer samples, or a cache folder holding fewer rows "
                     "(`edgelora cache clear`, or another --cache-dir)" if older else "or fewer samples"))


def _mb(nbytes: float) -> str:
    """Bytes as MB to three significant digits."""
    return f"{nbytes / 2**20:.3g} MB"
