"""The protocols' reference MLP (d_in -> 96 -> 96 -> C, ReLU), pre-trained with torch, as a bundle."""
from __future__ import annotations

import numpy as np

from tests.helpers import mlp_bundle


def pretrain_mlp(x: np.ndarray, y: np.ndarray, num_classes: int, seed: int = 0, epochs: int = 30):
    """Adam lr 1e-3, batch 64, 30 epochs, seed 0 (datasets/README.md); returns [(W, b)] as numpy."""
    import torch
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    d = x.shape[1]
    net = torch.nn.Sequential(torch.nn.Linear(d, 96), torch.nn.ReLU(), torch.nn.Linear(96, 96), torch.nn.ReLU(),
                              torch.nn.Linear(96, num_classes))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64))
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), 64):
            b = perm[i:i + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xt[b]), yt[b]).backward()
            opt.step()
    return [(m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy()) for m in net if hasattr(m, "weight")]


def reference_bundle(folder, data: dict, seed: int = 0):
    """Pre-train on the standardised source split and write the bundle (standardisation in the manifest)."""
    xs, ys = data["source"]
    xs = (xs - data["mean"]) / data["std"]
    layers = pretrain_mlp(xs, ys, len(data["classes"]), seed)
    return mlp_bundle(folder, layers, data["classes"], data["mean"], data["std"])
