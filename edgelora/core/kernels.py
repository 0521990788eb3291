"""Array kernels of the numpy backward (backprop.py): im2col convolutions and their adjoint, non-overlapping max
pooling and its gradient. A conv layer's columns are column-major, (C, *k, N, *S_out) in memory, so its output
and gradients stay channel-major, (C, N, *S), and reach the next conv's columns without a transpose copy."""
from __future__ import annotations

import numpy as np


def mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b, column-major when a is (as im2col's columns are): its transpose is then C-ordered (O, N S), which
    is (O, N, *S) in memory, so the layer's output needs no copy to become (N, O, *S)."""
    return (b.T @ a.T).T if a.flags.f_contiguous and not a.flags.c_contiguous else a @ b


def im2col(x: np.ndarray, k: tuple, pads: tuple, strides: tuple):
    """x (N, C, *S) -> columns (N * prod(S_out), C * prod(k)) ordered like W.reshape(O, -1), and S_out. The
    columns are column-major: (C, *k, N, *S_out) in memory, filled by one contiguous copy per kernel offset."""
    n, c = x.shape[0], x.shape[1]
    padded = tuple(s + 2 * q for s, q in zip(x.shape[2:], pads))
    spatial = tuple((s - kk) // st + 1 for s, kk, st in zip(padded, k, strides))
    xp = np.zeros((c, n) + padded, x.dtype)                       # channel-major, padded
    xp[(slice(None), slice(None)) + tuple(slice(q, q + s) for q, s in zip(pads, x.shape[2:]))] = np.moveaxis(x, 1, 0)
    cols = np.empty((c,) + tuple(k) + (n,) + spatial, x.dtype)
    for off in np.ndindex(*k):
        cols[(slice(None),) + off] = xp[(slice(None), slice(None)) + _taps(off, spatial, strides)]
    return cols.reshape(c * int(np.prod(k)), -1).T, spatial


def col2im(dcols: np.ndarray, xshape: tuple, k: tuple, pads: tuple, strides: tuple) -> np.ndarray:
    """Adjoint of im2col: scatter-add the column gradients back onto the (padded) input; (N, C, *S), channel-
    major in memory."""
    n, c = xshape[0], xshape[1]
    padded = tuple(s + 2 * q for s, q in zip(xshape[2:], pads))
    spatial = tuple((s - kk) // st + 1 for s, kk, st in zip(padded, k, strides))
    d = dcols.T.reshape((c,) + tuple(k) + (n,) + spatial)
    dx = np.zeros((c, n) + padded, dcols.dtype)
    for off in np.ndindex(*k):
        dx[(slice(None), slice(None)) + _taps(off, spatial, strides)] += d[(slice(None),) + off]
    inner = dx[(slice(None), slice(None)) + tuple(slice(q, q + s) for q, s in zip(pads, xshape[2:]))]
    return np.moveaxis(inner, 0, 1)


def _taps(off: tuple, spatial: tuple, strides: tuple) -> tuple:
    """The padded input's elements that kernel offset `off` multiplies, for every output position."""
    return tuple(slice(o, o + st * (s - 1) + 1, st) for o, s, st in zip(off, spatial, strides))


def _window_slice(off: tuple, k: tuple, out: tuple) -> tuple:
    """The elements at offset `off` of every non-overlapping pooling window (kernel k, output shape out)."""
    return (slice(None), slice(None)) + tuple(slice(o, o + kk * n, kk) for o, kk, n in zip(off, k, out))


def maxpool(x: np.ndarray, k: tuple):
    """Non-overlapping max pooling (floor mode): the max of each window, and (x, max) saved for backward."""
    out = tuple(s // kk for s, kk in zip(x.shape[2:], k))
    views = [x[_window_slice(off, k, out)] for off in np.ndindex(*k)]
    best = views[0].copy(order="K")
    for v in views[1:]:
        np.maximum(best, v, out=best)
    return best, (x, best, tuple(k))


def maxpool_back(dy: np.ndarray, x: np.ndarray, best: np.ndarray, k: tuple) -> np.ndarray:
    """Each window's gradient to its first largest element in np.ndindex(*k) order (argmax's choice, as
    torch's); elements a floor-mode window leaves out get 0."""
    dx, free = np.zeros_like(x), None                  # free: windows whose maximum is still to be found
    for off in np.ndindex(*k):
        here = x[_window_slice(off, k, best.shape[2:])] == best
        if free is None:
            free = ~here
        else:
            here &= free
            free ^= here                               # here is within free: free and not here
        np.multiply(dy, here, out=dx[_window_slice(off, k, best.shape[2:])])
    return dx
