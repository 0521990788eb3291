"""The fixed protocols of ../shared/datasets/README.md: the same splits for every benchmark and test."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

DATASETS = Path(os.environ.get("EDGELORA_DATASETS", Path(__file__).resolve().parents[1].parent / "shared" / "datasets"))


def _load(rel: str) -> np.lib.npyio.NpzFile:
    path = DATASETS / rel
    if not path.is_file():
        raise FileNotFoundError(f"dataset not found: {path} (set EDGELORA_DATASETS to the shared/datasets folder)")
    return np.load(path, allow_pickle=False)


def _standardise(source: np.ndarray):
    """Per-feature mean and std of the source split: every split is scaled with these (the protocol's rule)."""
    mean = source.mean(axis=0)
    std = source.std(axis=0) + 1e-6
    return mean.astype(np.float32), std.astype(np.float32)


def fan() -> dict:
    """Cooling-fan: 12 cm fan, 3 damage types; silentA (source) -> noisy (fine-tune / test halves)."""
    d = _load("cooling_fan/cooling_fan.npz")
    keep = d["fan_size"] == 1
    x, y, env = d["X"][keep], d["y_type"][keep], d["environment"][keep]
    cond, idx = d["condition"][keep], d["index_in_condition"][keep]
    src = env == 0
    tgt = env == 2
    first = np.zeros(len(x), bool)
    for c in np.unique(cond[tgt]):
        m = tgt & (cond == c)
        first[m] = idx[m] < np.median(idx[m])
    ft, te = tgt & first, tgt & ~first
    mean, std = _standardise(x[src])
    return {"source": (x[src], y[src]), "finetune": (x[ft], y[ft]), "test": (x[te], y[te]),
            "mean": mean, "std": std, "classes": [str(c) for c in d["type_names"]]}


def har() -> dict:
    """HAR: 6 activities; source = 21 train users; per test user: first half (time order) fine-tune, rest test."""
    d = _load("hapt_raw/hapt_raw_w128.npz")
    keep = d["y"] < 6
    x = d["X"][keep].reshape(int(keep.sum()), -1).astype(np.float32)
    y, subj = d["y"][keep], d["subject"][keep]
    exp, start = d["experiment"][keep], d["start_sample"][keep]
    test_users = [int(u) for u in d["uci_har_test_subjects"]]
    src = ~np.isin(subj, test_users)
    mean, std = _standardise(x[src])
    users = {}
    for u in test_users:
        idx = np.flatnonzero(subj == u)
        idx = idx[np.lexsort((start[idx], exp[idx]))]
        half = len(idx) // 2
        users[u] = {"finetune": (x[idx[:half]], y[idx[:half]]), "test": (x[idx[half:]], y[idx[half:]])}
    return {"source": (x[src], y[src]), "users": users, "mean": mean, "std": std,
            "classes": [str(c) for c in d["class_names"][:6]]}


def fsdd(fold: int = 0) -> dict:
    """FSDD spoken digits, leave speaker `fold` out: pretrain on the other 5 speakers, fine-tune on the held-out
    speaker's takes 5..49, test on its takes 0..4. Input = log-mel (N, 98, 40) float32; standardised per mel
    band with source statistics (mean/std shape (1, 40), broadcast over time)."""
    d = _load("fsdd/fsdd.npz")
    speakers = [str(s) for s in d["speaker_names"]]
    if not isinstance(fold, (int, np.integer)) or not 0 <= fold < len(speakers):
        raise ValueError(f"fsdd fold should be a speaker index 0..{len(speakers) - 1} ({speakers}), found {fold!r}")
    x, y, subj, take = d["logmel"].astype(np.float32), d["y"], d["subject"], d["take"]
    src, held = subj != fold, subj == fold
    ft, te = held & (take >= 5), held & (take <= 4)
    mean = x[src].mean(axis=(0, 1), dtype=np.float64)[None, :].astype(np.float32)   # float64 sums: 245k terms
    std = (x[src].std(axis=(0, 1), dtype=np.float64) + 1e-6)[None, :].astype(np.float32)
    return {"source": (x[src], y[src]), "finetune": (x[ft], y[ft]), "test": (x[te], y[te]), "mean": mean,
            "std": std, "classes": [str(i) for i in range(10)], "speaker": speakers[fold]}


def mnist() -> dict:
    """MNIST writers: pretrain on writer group 0 (Census employees); group 1 (students) by index: first half
    fine-tune, second half test. Input = pixels / 255 as (N, 28, 28) float32; one mean/std (scalars) of the source."""
    d = _load("mnist_test/mnist_t10k.npz")
    x, y, group = d["X"].astype(np.float32) / 255.0, d["y"], d["writer_group"]
    src = np.flatnonzero(group == 0)
    tgt = np.flatnonzero(group == 1)
    half = len(tgt) // 2
    ft, te = tgt[:half], tgt[half:]
    mean, std = np.float32(x[src].mean(dtype=np.float64)), np.float32(x[src].std(dtype=np.float64) + 1e-6)
    return {"source": (x[src], y[src]), "finetune": (x[ft], y[ft]), "test": (x[te], y[te]),
            "mean": np.asarray(mean), "std": np.asarray(std), "classes": [str(i) for i in range(10)]}
