"""The Skip-Cache's index from sample key to row: sorted numpy arrays searched with np.searchsorted.

A sample key (16 bytes: runtime/cache.sample_keys) is read as two 64-bit integers (hi, lo). The index keeps
hi, lo and the row of every key (int32 below 2^31 rows), sorted by (hi, lo): 20 bytes per sample, where a
dict of bytes keys and a list took about 130. Keys added are held aside and merged in at the next lookup, so
that a fill adding its rows in many small steps pays for one merge (O(n)) per lookup, not one per step.
"""
from __future__ import annotations

import numpy as np

from ..core.bookkeeping import index_dtype

KEY_BYTES = 16


def key_array(keys) -> np.ndarray:
    """(n, 2) uint64 from a list of 16-byte keys, an (n, 16) uint8 array or an (n, 2) uint64 array."""
    if isinstance(keys, np.ndarray) and keys.dtype == np.uint64 and keys.ndim == 2 and keys.shape[1] == 2:
        return keys
    if isinstance(keys, np.ndarray):
        raw = np.ascontiguousarray(keys, np.uint8).tobytes()
    else:
        raw = b"".join(keys)
        if len(raw) != KEY_BYTES * len(keys):
            raise ValueError(f"sample keys should be {KEY_BYTES} bytes each, found {len(raw)} bytes for {len(keys)} keys")
    return np.frombuffer(raw, np.uint64).reshape(-1, 2)


class KeyIndex:
    """Sample key -> row, for rows 0..len-1."""

    def __init__(self, keys: np.ndarray | None = None):
        """keys: (n, 2) uint64, the keys of rows 0..n-1 in row order."""
        keys = np.empty((0, 2), np.uint64) if keys is None else keys
        order = np.lexsort((keys[:, 1], keys[:, 0]))
        self._hi, self._lo = np.asarray(keys[order, 0]), np.asarray(keys[order, 1])
        self._row = order.astype(index_dtype(len(keys)))
        self._pending: list[tuple[np.ndarray, int]] = []   # (keys, first row) added since the last lookup
        self._count = len(keys)

    def __len__(self) -> int:
        return self._count

    def add(self, keys: np.ndarray, first_row: int) -> None:
        """Index `keys` ((k, 2) uint64, none of them indexed yet) as rows first_row, first_row + 1, ..."""
        self._pending.append((np.array(keys, np.uint64), first_row))
        self._count += len(keys)

    def find(self, keys: np.ndarray) -> np.ndarray:
        """The row of each of `keys` ((m, 2) uint64), -1 where a key is not indexed."""
        self._merge()
        left, right = self._span(keys[:, 0])
        found = np.full(len(keys), -1, self._row.dtype)
        one = np.flatnonzero(right - left == 1)
        hit = one[self._lo[left[one]] == keys[one, 1]]
        found[hit] = self._row[left[hit]]
        for i in np.flatnonzero(right - left > 1):  # keys sharing their first 8 bytes: about never, but exact
            j = left[i] + int(np.searchsorted(self._lo[left[i]:right[i]], keys[i, 1]))
            if j < right[i] and self._lo[j] == keys[i, 1]:
                found[i] = self._row[j]
        return found

    def in_row_order(self) -> np.ndarray:
        """Every key, (len, 2) uint64, in row order."""
        self._merge()
        keys = np.empty((len(self), 2), np.uint64)
        keys[self._row, 0], keys[self._row, 1] = self._hi, self._lo
        return keys

    def _span(self, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.searchsorted(self._hi, hi, "left"), np.searchsorted(self._hi, hi, "right")

    def _merge(self) -> None:
        """Insert the pending keys into the sorted arrays, keeping them sorted by (hi, lo)."""
        if not self._pending:
            return
        keys = np.concatenate([k for k, _ in self._pending])
        dtype = index_dtype(self._count)
        rows = np.concatenate([np.arange(first, first + len(k), dtype=dtype) for k, first in self._pending])
        self._pending = []
        order = np.lexsort((keys[:, 1], keys[:, 0]))
        keys, rows = keys[order], rows[order]
        left, right = self._span(keys[:, 0])
        at = left.copy()
        for i in np.flatnonzero(right > left):  # an indexed key shares its first 8 bytes: place it by lo
            at[i] = left[i] + np.searchsorted(self._lo[left[i]:right[i]], keys[i, 1])
        self._hi = np.insert(self._hi, at, keys[:, 0])
        self._lo = np.insert(self._lo, at, keys[:, 1])
        self._row = np.insert(self._row.astype(dtype, copy=False), at, rows)
