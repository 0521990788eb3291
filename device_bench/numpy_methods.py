"""The paper's baselines in numpy (FT-All, FT-Last, LoRA-All, LoRA-Last), instrumented per step.

Same recipe as edgelora.finetune: the 'tail' validation split, seeded shuffles, mini-batches, val loss
after each epoch and the best epoch restored. Times are measured in the timed run itself (five clock
reads per step, < 1 % of a step): backbone (frozen prefix forward), forward, backward (loss gradient
included), update, eval (validation), other (split, shuffles, batch gathers, best-epoch copies).
"""
from __future__ import annotations

import time

import numpy as np

from edgelora.core.lora import split
from edgelora.core.losses import cross_entropy, cross_entropy_grad
from edgelora.core.optim import Adam, AdamW
from edgelora.runtime.train_config import validation_split

from edgelora.core.chain import Chain
from .config import BenchConfig, layer_modes
from edgelora.core.backprop import Engine, init_params
from .profile import Clock, peak_rss_mb


def finetune_numpy(method: str, chain: Chain, x: np.ndarray, y: np.ndarray, cfg: BenchConfig, seed: int):
    """Train `method` on (x, y); returns (engine, trained params dict, record with seconds and breakdown)."""
    modes = layer_modes(method, chain.num_layers)
    eng = Engine(chain, modes, cfg.rank, cfg.alpha / cfg.rank)
    clock = Clock()
    t0 = t = time.perf_counter()
    x = chain.prep(x)
    y = np.asarray(y, np.int64)
    c = chain.manifest.num_outputs
    train_idx, val_idx = validation_split(y, cfg.val_fraction, "tail", seed, "classification")
    flat, shapes = init_params(chain, modes, cfg.rank, seed)
    grad = np.zeros_like(flat)
    p, g = split(flat, shapes), split(grad, shapes)
    if modes.count("lora"):
        opt, lr = AdamW(flat.size, weight_decay=cfg.lora_weight_decay), cfg.lora_lr
    else:
        opt, lr = Adam(flat.size), cfg.ft_lr
    onehot = np.eye(c, dtype=np.float32)[y]
    rng = np.random.default_rng(seed)
    best, best_loss, best_epoch = flat.copy(), None, 0
    xv = x[val_idx]
    bs = cfg.batch_size
    t = clock.add("other", t)
    for epoch in range(1, cfg.epochs + 1):
        perm = rng.permutation(train_idx)
        for i in range(0, len(perm), bs):
            idx = perm[i:i + bs]
            xb = x[idx]
            t = clock.add("other", t)
            h = eng.prefix(xb)
            t = clock.add("backbone", t)
            out, saved = eng.forward(p, h)
            t = clock.add("forward", t)
            eng.backward(cross_entropy_grad(out, onehot[idx]), saved, p, g)
            t = clock.add("backward", t)
            opt.step(flat, grad, lr)
            t = clock.add("update", t)
        if len(val_idx):
            loss = cross_entropy(outputs(eng, p, xv), y[val_idx])[0]
            t = clock.add("eval", t)
            if best_loss is None or loss < best_loss:
                best[:], best_loss, best_epoch = flat, loss, epoch
        t = clock.add("other", t)
    if best_loss is not None:
        flat[:] = best
    seconds = clock.add("other", t) - t0
    record = {"seconds": seconds, "breakdown": clock.sections, "trainable_params": int(flat.size),
              "best_epoch": best_epoch, "steps": cfg.epochs * -(-len(train_idx) // bs),
              "samples": {"train": int(len(train_idx)), "val": int(len(val_idx))}, "peak_rss_mb": peak_rss_mb(),
              "epoch_seconds": seconds / cfg.epochs}
    return eng, p, record


def outputs(eng: Engine, p: dict, x: np.ndarray, batch: int = 128) -> np.ndarray:
    """Network outputs for prepared inputs, in chunks (bounds im2col memory on CNNs)."""
    return np.concatenate([eng.forward(p, eng.prefix(x[a:a + batch]), save=False)[0]
                           for a in range(0, len(x), batch)])


def accuracy(eng: Engine, p: dict, x: np.ndarray, y: np.ndarray) -> float:
    """Test accuracy of the fine-tuned network."""
    return float((outputs(eng, p, eng.chain.prep(x)).argmax(axis=1) == np.asarray(y)).mean())


def run(method: str, bundle: str, data: dict, cfg: BenchConfig, seed: int) -> dict:
    """One fine-tune + test evaluation, as reported by the worker."""
    from edgelora.graphs.onnx_chain import load_chain
    chain = load_chain(bundle)
    eng, p, record = finetune_numpy(method, chain, data["x_ft"], data["y_ft"], cfg, seed)
    record["accuracy"] = accuracy(eng, p, data["x_te"], data["y_te"])
    return record
