"""fsdd's log-mel features recomputed from its raw audio, the way ../shared/datasets/fsdd/README.txt says
they were made: audio / 32768, centred pad/crop to 8000 samples (1 s at 8 kHz), 25 ms Hann frames, 10 ms
hop, 256-point FFT, 40 triangular mel bands, log(power + 1e-6). Matches the stored `logmel` within 0.004
(its float16 rounding), so a shifted recording goes through exactly the lab's front end."""
from __future__ import annotations

import numpy as np

RATE, SECOND, FRAME, HOP, FFT, MELS = 8000, 8000, 200, 80, 256, 40
FRAMES = (SECOND - FRAME) // HOP + 1          # 98


def _mel(f):
    return 2595.0 * np.log10(1.0 + f / 700.0)


def _hz(m):
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def filterbank(mels: int = MELS) -> np.ndarray:
    """(mels, FFT // 2 + 1) triangular filters on FFT-bin edges, evenly spaced in mel from 0 to RATE / 2."""
    edges = np.floor((FFT + 1) * _hz(np.linspace(0.0, _mel(RATE / 2), mels + 2)) / RATE).astype(int)
    fb = np.zeros((mels, FFT // 2 + 1))
    for m in range(mels):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        fb[m, lo:mid] = (np.arange(lo, mid) - lo) / max(mid - lo, 1)
        fb[m, mid:hi] = (hi - np.arange(mid, hi)) / max(hi - mid, 1)
    return fb


def one_second(clip: np.ndarray) -> np.ndarray:
    """int16 recording -> float64 in [-1, 1], centred and zero-padded or cropped to exactly 1 s."""
    x = np.asarray(clip, np.float64) / 32768.0
    if len(x) >= SECOND:
        start = (len(x) - SECOND) // 2
        return x[start:start + SECOND]
    before = (SECOND - len(x)) // 2
    return np.pad(x, (before, SECOND - len(x) - before))


def clips(d, rows: np.ndarray) -> np.ndarray:
    """(len(rows), SECOND) one-second signals of fsdd recordings `rows` (d: the opened fsdd.npz)."""
    audio, offsets, lengths = d["audio"], d["offsets"], d["lengths"]
    return np.stack([one_second(audio[offsets[i]:offsets[i] + lengths[i]]) for i in rows])


def logmel(signals: np.ndarray, chunk: int = 128) -> np.ndarray:
    """(N, SECOND) signals -> (N, FRAMES, MELS) float32 log-mel, the README's recipe (`chunk` rows at a time:
    the frames of 128 one-second signals are 20 MB)."""
    signals = np.asarray(signals, np.float64)
    if signals.ndim != 2 or signals.shape[1] != SECOND:
        raise ValueError(f"expected one-second signals of shape (N, {SECOND}), found {signals.shape}")
    idx = np.arange(FRAMES)[:, None] * HOP + np.arange(FRAME)[None, :]
    window, fb = np.hanning(FRAME), filterbank().T
    out = np.empty((len(signals), FRAMES, MELS), np.float32)
    for a in range(0, len(signals), chunk):
        frames = signals[a:a + chunk, idx] * window                      # (n, FRAMES, FRAME)
        power = np.abs(np.fft.rfft(frames, FFT, axis=-1)) ** 2            # (n, FRAMES, FFT/2 + 1)
        out[a:a + chunk] = np.log(power @ fb + 1e-6)
    return out
