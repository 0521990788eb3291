"""What a user would pick instead: PyTorch FT-All, FT-Last and LoRA-All (plain LoRA, PEFT conventions).

Written the way a competent user writes a small fine-tune: the data as tensors in memory, a seeded
torch.randperm per epoch and index slicing (no DataLoader: with tensors already in RAM it only adds
per-batch overhead), F.cross_entropy, torch.optim.Adam/AdamW with default settings otherwise,
zero_grad(set_to_none=True), one thread. Same recipe as every other method (device_bench.config):
the same 'tail' validation split, val loss after each epoch, best epoch restored.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from edgelora.runtime.train_config import validation_split

from . import torch_net
from edgelora.core.chain import Chain
from edgelora.graphs.onnx_chain import load_chain
from .config import BenchConfig
from .profile import Clock, peak_rss_mb


def prepare(method: str, chain: Chain, cfg: BenchConfig, seed: int):
    """The model and optimiser of `method` (model building is not part of the fine-tune time)."""
    torch.manual_seed(seed)
    net = torch_net.build(chain)
    layers = torch_net.weight_layers(net)
    if method == "torch-lora-all":
        torch_net.with_lora(net, layers, cfg.rank, cfg.alpha)
        params = [p for p in net.parameters() if p.requires_grad]
        return net, torch.optim.AdamW(params, lr=cfg.lora_lr, weight_decay=cfg.lora_weight_decay)
    if method == "torch-ft-last":
        net.requires_grad_(False)
        net[layers[-1]].requires_grad_(True)
    elif method != "torch-ft-all":
        raise ValueError(f"unknown torch method {method!r}; expected torch-ft-all, torch-ft-last, torch-lora-all")
    return net, torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=cfg.ft_lr)


def finetune_torch(method: str, chain: Chain, x: np.ndarray, y: np.ndarray, cfg: BenchConfig, seed: int):
    """Train; returns (net, record). Per-step parts: forward (+ loss), backward, update (+ zero_grad)."""
    net, opt = prepare(method, chain, cfg, seed)
    trainable = {k: v for k, v in net.named_parameters() if v.requires_grad}
    clock = Clock()
    t0 = t = time.perf_counter()
    xt = torch.from_numpy(chain.prep(x))
    yt = torch.from_numpy(np.asarray(y, np.int64))
    train_idx, val_idx = (torch.from_numpy(i) for i in
                          validation_split(np.asarray(y), cfg.val_fraction, "tail", seed, "classification"))
    gen = torch.Generator().manual_seed(seed)
    best, best_loss, best_epoch = None, None, 0
    bs = cfg.batch_size
    t = clock.add("other", t)
    for epoch in range(1, cfg.epochs + 1):
        net.train()
        perm = train_idx[torch.randperm(len(train_idx), generator=gen)]
        for i in range(0, len(perm), bs):
            idx = perm[i:i + bs]
            xb, yb = xt[idx], yt[idx]
            t = clock.add("other", t)
            loss = F.cross_entropy(net(xb), yb)
            t = clock.add("forward", t)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            t = clock.add("backward", t)
            opt.step()
            t = clock.add("update", t)
        if len(val_idx):
            net.eval()
            with torch.no_grad():
                val_loss = F.cross_entropy(net(xt[val_idx]), yt[val_idx]).item()
            t = clock.add("eval", t)
            if best_loss is None or val_loss < best_loss:
                best_loss, best_epoch = val_loss, epoch
                best = {k: v.detach().clone() for k, v in trainable.items()}
        t = clock.add("other", t)
    if best is not None:
        with torch.no_grad():
            for k, v in trainable.items():
                v.copy_(best[k])
    seconds = clock.add("other", t) - t0
    record = {"seconds": seconds, "breakdown": clock.sections, "best_epoch": best_epoch,
              "trainable_params": int(sum(v.numel() for v in trainable.values())),
              "steps": cfg.epochs * -(-len(train_idx) // bs), "epoch_seconds": seconds / cfg.epochs,
              "samples": {"train": int(len(train_idx)), "val": int(len(val_idx))}, "peak_rss_mb": peak_rss_mb()}
    return net, record


def accuracy(net, chain: Chain, x: np.ndarray, y: np.ndarray, batch: int = 256) -> float:
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(torch.from_numpy(chain.prep(x[a:a + batch]))).argmax(1) for a in range(0, len(x), batch)])
    return float((pred.numpy() == np.asarray(y)).mean())


def run(method: str, bundle: str, data: dict, cfg: BenchConfig, seed: int) -> dict:
    """One fine-tune + test evaluation, as reported by the worker."""
    torch.set_num_threads(1)
    chain = load_chain(bundle)
    net, record = finetune_torch(method, chain, data["x_ft"], data["y_ft"], cfg, seed)
    record["accuracy"] = accuracy(net, chain, data["x_te"], data["y_te"])
    return record
