"""Deterministic supervised pre-training of a torch model on numpy arrays (the reference backbones)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


def pretrain(model: nn.Module, x: np.ndarray, y: np.ndarray, *, threads: int, epochs: int = 30, lr: float = 1e-3,
             batch_size: int = 64, seed: int = 0, weight_decay: float = 0.0) -> nn.Module:
    """Adam on cross-entropy, seeded shuffles (datasets/README.md: lr 1e-3, batch 64, 30 epochs, seed 0).

    `x` must already be standardised. `threads` is torch's thread count: a fixed number gives the same
    weights on every run (the sums' order depends on it). Returns the model in eval mode.
    """
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"expected as many labels as samples (> 0), found {len(x)} samples and {len(y)} labels")
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    xt, yt = torch.from_numpy(np.ascontiguousarray(x, np.float32)), torch.from_numpy(np.asarray(y, np.int64))
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), batch_size):
            b = perm[i:i + batch_size]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[b]), yt[b]).backward()
            opt.step()
    return model.eval()


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 512) -> float:
    """Top-1 accuracy of a torch model on standardised inputs."""
    with torch.no_grad():
        pred = np.concatenate([model(torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size], np.float32)))
                               .argmax(1).numpy() for i in range(0, len(x), batch_size)])
    return float((pred == np.asarray(y)).mean())
