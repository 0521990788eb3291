"""A small, fully specified PRNG that every training client implements identically (Python, JS, Kotlin, ...).

SplitMix64 (G. Steele, D. Lea, C. Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014;
constants of Java's `SplittableRandom`). All arithmetic is on unsigned 64-bit integers, modulo 2^64:

    state += 0x9E3779B97F4A7C15
    z = state
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB
    return z ^ (z >> 31)

A stream starts at `state = (seed mod 2^64) XOR (stream << 63)`: stream 0 initialises the adapters,
stream 1 shuffles the training samples (one permutation per epoch, drawn in epoch order).

- `uniform()`: `(next() >> 11) * 2^-53`, a double in [0, 1).
- Adapter init: for each tap in order, A_k (d_k, r) row-major, `A = (2 u - 1) / sqrt(d_k)` computed in
  float64, then rounded to float32 (PEFT's kaiming-uniform bound); B and the bias start at zero.
- `permutation(n)`: Fisher-Yates over `a = [0, 1, ..., n-1]`: for i = n-1 down to 1,
  `j = ((next() >> 32) * (i + 1)) >> 32` and swap a[i], a[j] (n-1 draws; multiply-shift, no rejection).
"""
from __future__ import annotations

import numpy as np

from .bookkeeping import index_dtype

GAMMA = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB
MASK = (1 << 64) - 1
INIT_STREAM, SHUFFLE_STREAM = 0, 1
PERMUTE_CHUNK = 8192   # draws made at once by `permutation` (their temporaries: about 300 KB)


def _mix(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(MIX1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(MIX2)
    return z ^ (z >> np.uint64(31))


class SplitMix64:
    """One SplitMix64 stream. `state` (a Python int) is all there is to save and restore."""

    def __init__(self, seed: int, stream: int = SHUFFLE_STREAM):
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed should be an integer, found {type(seed).__name__}")
        if stream not in (0, 1):
            raise ValueError(f"stream should be 0 or 1, found {stream}")
        self.state = (int(seed) & MASK) ^ (stream << 63)

    def next_u64(self, n: int) -> np.ndarray:
        """The next n outputs (uint64), vectorised: output k is mix(state + k * GAMMA)."""
        steps = np.arange(1, n + 1, dtype=np.uint64)
        with np.errstate(over="ignore"):
            z = _mix(np.uint64(self.state) + steps * np.uint64(GAMMA))
        self.state = (self.state + n * GAMMA) & MASK
        return z

    def uniform(self, n: int) -> np.ndarray:
        """n doubles in [0, 1): the top 53 bits of each output."""
        return (self.next_u64(n) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53

    def permutation(self, n: int) -> np.ndarray:
        """A Fisher-Yates permutation of range(n) (int32 below 2^31 elements: core/bookkeeping.index_dtype), as
        specified in the module docstring. The swaps run in place over the result, the draws made PERMUTE_CHUNK
        at a time: 4 bytes an element and a fixed few hundred KB (an array of every draw took 24 more)."""
        a = np.arange(n, dtype=index_dtype(n))
        m = memoryview(a)   # element access yields Python ints: no numpy scalar per swap
        for top in range(n - 1, 0, -PERMUTE_CHUNK):             # i = top .. bottom + 1, in spec order
            bottom = max(0, top - PERMUTE_CHUNK)
            bound = np.arange(top + 1, bottom + 1, -1, dtype=np.uint64)          # i + 1
            js = (((self.next_u64(top - bottom) >> np.uint64(32)) * bound) >> np.uint64(32)).tolist()
            for i, j in zip(range(top, bottom, -1), js):  # the swaps depend on each other: sequential
                m[i], m[j] = m[j], m[i]
        return a


def init_values(widths: tuple[int, ...], rank: int, seed: int) -> list[np.ndarray]:
    """The initial A_k (d_k, r) float32 of every tap, from stream 0 of `seed`."""
    rng = SplitMix64(seed, INIT_STREAM)
    return [((2.0 * rng.uniform(d * rank) - 1.0) / np.sqrt(d)).astype(np.float32).reshape(d, rank) for d in widths]
