"""Protocols where the device's input itself shifted, built only from the real data in ../shared/datasets.

Each builder returns the lab's clean source split (pre-training, and the standardisation statistics) and
the device's shifted data: a fine-tune pool the labelled samples are drawn from (`draw`, per seed) and a
held-out test set, disjoint from the pool by construction (other time halves / other takes). The shift's
parameters are fixed constants (SHIFTS, quoted in docs/shifts.md); its noise is drawn from a fixed seed,
so a protocol's data is the same on every run and only the labelled draw depends on the seed.

- har-mount: hapt_raw, the phone re-mounted on the 9 test users: acc and gyro triplets rotated 80 degrees,
  per-axis gain and offset, a little noise. Pooled over the test users: each user's windows in time order,
  first half = pool, second half = test.
- series-clock: fsdd audio whose clock runs 150 ms late, with a gain and a DC offset, as a coarse log-mel
  series (49 frames x 20 bands) read by models where position matters (MLP, CNN with a flattening head).
- fsdd-mic: fsdd audio through another microphone (band-limited 400-2000 Hz with a tilt), gain and noise,
  then the lab's log-mel front end. Pooled over speakers: takes 10..49 = source, 5..9 = pool, 0..4 = test.

`rows` gives each split's row numbers in the dataset file (to check that they are disjoint).
"""
from __future__ import annotations

import numpy as np

from . import logmel
from .protocols import _load

PROTOCOLS = ("har-mount", "series-clock", "fsdd-mic")
SHIFTS = {
    "har-mount": {"rotation_deg": 80.0, "axis": (0.2, 0.3, 1.0), "acc_gain": (0.9, 1.1, 0.85),
                  "acc_offset_g": (0.05, -0.08, 0.1), "gyro_gain": (1.15, 1.15, 1.15),
                  "gyro_offset": (0.02, -0.02, 0.01), "noise_acc_g": 0.01, "noise_gyro": 0.01},
    "series-clock": {"delay_s": 0.15, "gain": 0.6, "dc_offset": 0.01},
    "fsdd-mic": {"low_hz": 400.0, "high_hz": 2000.0, "tilt_db_per_octave": 3.0, "gain": 0.4, "noise_rms": 0.002},
}
NOISE_SEED = 1234         # the shift's own noise: fixed, so the shifted data never depends on the run's seed


def rotation(axis, degrees: float) -> np.ndarray:
    """3x3 rotation matrix about `axis` (Rodrigues)."""
    k = np.asarray(axis, np.float64) / np.linalg.norm(axis)
    a = np.deg2rad(degrees)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(a) * kx + (1 - np.cos(a)) * kx @ kx


def mount(x: np.ndarray, p: dict, rng: np.random.Generator) -> np.ndarray:
    """(N, T, 6) acc+gyro windows as a phone mounted otherwise would record them: both triplets rotated by
    the same matrix, then per-axis gain and offset, then Gaussian noise."""
    r = rotation(p["axis"], p["rotation_deg"])
    acc = x[..., :3] @ r.T * np.asarray(p["acc_gain"]) + np.asarray(p["acc_offset_g"])
    gyro = x[..., 3:] @ r.T * np.asarray(p["gyro_gain"]) + np.asarray(p["gyro_offset"])
    acc = acc + rng.normal(0.0, p["noise_acc_g"], acc.shape)
    gyro = gyro + rng.normal(0.0, p["noise_gyro"], gyro.shape)
    return np.concatenate([acc, gyro], axis=-1).astype(np.float32)


def late_clock(signals: np.ndarray, p: dict) -> np.ndarray:
    """One-second signals recorded by a clock `delay_s` late (the word starts later, zeros before it, the tail
    cut), times `gain`, plus a DC offset."""
    k = int(round(p["delay_s"] * logmel.RATE))
    late = np.concatenate([np.zeros((len(signals), k)), signals[:, :signals.shape[1] - k]], axis=1)
    return late * p["gain"] + p["dc_offset"]


def microphone(signals: np.ndarray, p: dict, rng: np.random.Generator) -> np.ndarray:
    """One-second signals through another microphone: a zero-phase band-pass (2nd-order Butterworth
    magnitudes at low_hz and high_hz) with a spectral tilt, a gain, and white noise."""
    f = np.fft.rfftfreq(signals.shape[1], 1.0 / logmel.RATE)
    f[0] = 1e-3
    h = 1 / np.sqrt(1 + (p["low_hz"] / f) ** 4) / np.sqrt(1 + (f / p["high_hz"]) ** 4)
    h = h * 10 ** (p["tilt_db_per_octave"] * np.log2(f / 1000.0) / 20)
    y = np.fft.irfft(np.fft.rfft(signals, axis=1) * h, signals.shape[1], axis=1)
    return y * p["gain"] + rng.normal(0.0, p["noise_rms"], y.shape)


def _channel_stats(x: np.ndarray, axes: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Source mean and std over `axes` (kept as size-1 dims, batch dim dropped): broadcast over a sample."""
    mean = x.mean(axis=axes, keepdims=True, dtype=np.float64)[0]
    std = x.std(axis=axes, keepdims=True, dtype=np.float64)[0] + 1e-6
    return mean.astype(np.float32), std.astype(np.float32)


def har_mount() -> dict:
    """har-mount (module docstring). Input (128, 6); per-channel standardisation from the 21 source users."""
    d = _load("hapt_raw/hapt_raw_w128.npz")
    keep = d["y"] < 6
    x, y, subj = d["X"][keep].astype(np.float32), d["y"][keep], d["subject"][keep]
    exp, start = d["experiment"][keep], d["start_sample"][keep]
    test_users = [int(u) for u in d["uci_har_test_subjects"]]
    src = ~np.isin(subj, test_users)
    pool, test = user_halves(subj, exp, start, test_users)
    shifted = mount(x, SHIFTS["har-mount"], np.random.default_rng(NOISE_SEED))
    mean, std = _channel_stats(x[src], (0, 1))
    return {"name": "har-mount", "shift": SHIFTS["har-mount"], "source": (x[src], y[src]),
            "pool": (shifted[pool], y[pool]), "test": (shifted[test], y[test]), "test_clean": (x[test], y[test]),
            "mean": mean, "std": std, "classes": [str(c) for c in d["class_names"][:6]],
            "rows": {"source": np.flatnonzero(keep)[src], "pool": np.flatnonzero(keep)[pool],
                     "test": np.flatnonzero(keep)[test]}}


def _fsdd(name: str, shift, features) -> dict:
    """The pooled fsdd split: takes 10..49 clean (source), 5..9 shifted (pool), 0..4 shifted (test)."""
    d = _load("fsdd/fsdd.npz")
    y, take = d["y"], d["take"]
    src, pool, test = (np.flatnonzero(m) for m in (take >= 10, (take >= 5) & (take <= 9), take <= 4))
    xs = features(logmel.clips(d, src))
    pool_sig, test_sig = logmel.clips(d, pool), logmel.clips(d, test)
    rng = np.random.default_rng(NOISE_SEED)
    shifted_pool, shifted_test = features(shift(pool_sig, rng)), features(shift(test_sig, rng))
    mean, std = _channel_stats(xs, (0, 1))                          # per band, over samples and frames
    return {"name": name, "shift": SHIFTS[name], "source": (xs, y[src]), "pool": (shifted_pool, y[pool]),
            "test": (shifted_test, y[test]), "test_clean": (features(test_sig), y[test]),
            "mean": mean, "std": std, "classes": [str(i) for i in range(10)],
            "rows": {"source": src, "pool": pool, "test": test}}


def coarse(signals: np.ndarray) -> np.ndarray:
    """Log-mel averaged over 2 x 2 cells: (N, 49, 20), a short series whose frames are positions in time."""
    lm = logmel.logmel(signals)
    return lm.reshape(len(lm), logmel.FRAMES // 2, 2, logmel.MELS // 2, 2).mean(axis=(2, 4))


def series_clock() -> dict:
    """series-clock (module docstring). Input (49, 20); per-band standardisation from the source takes."""
    return _fsdd("series-clock", lambda s, rng: late_clock(s, SHIFTS["series-clock"]), coarse)


def fsdd_mic() -> dict:
    """fsdd-mic (module docstring). Input (98, 40) log-mel; per-band standardisation from the source takes."""
    return _fsdd("fsdd-mic", lambda s, rng: microphone(s, SHIFTS["fsdd-mic"], rng), logmel.logmel)


BUILDERS = {"har-mount": har_mount, "series-clock": series_clock, "fsdd-mic": fsdd_mic}


def build(protocol: str) -> dict:
    """The protocol's data (see the module docstring); a ValueError naming the known ones otherwise."""
    if protocol not in BUILDERS:
        raise ValueError(f"unknown shift protocol {protocol!r}; expected one of {list(PROTOCOLS)}")
    return BUILDERS[protocol]()


def draw(y: np.ndarray, shots: int, seed: int) -> np.ndarray:
    """`shots` labelled samples per class from a pool with labels `y`, drawn by `seed` (indices in pool order,
    the order a device collected them). A ValueError when a class has fewer than `shots` samples."""
    if not isinstance(shots, (int, np.integer)) or shots < 1:
        raise ValueError(f"shots should be a positive number of samples per class, found {shots!r}")
    rng = np.random.default_rng([int(seed), int(shots)])
    chosen = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if len(idx) < shots:
            raise ValueError(f"class {c} has {len(idx)} samples in the fine-tune pool, fewer than {shots} shots")
        chosen.append(rng.choice(idx, shots, replace=False))
    return np.sort(np.concatenate(chosen))


def user_halves(subj: np.ndarray, exp: np.ndarray, start: np.ndarray, users) -> tuple[np.ndarray, np.ndarray]:
    """(first halves, second halves): each user's windows in time order (experiment, start sample), split in two."""
    pool, test = [], []
    for u in users:
        idx = np.flatnonzero(subj == u)
        idx = idx[np.lexsort((start[idx], exp[idx]))]
        pool.append(idx[:len(idx) // 2])
        test.append(idx[len(idx) // 2:])
    return np.concatenate(pool), np.concatenate(test)
