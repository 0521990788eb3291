"""The protocols' reference MLP (d_in -> 96 -> 96 -> C, ReLU), pre-trained with torch, as a bundle."""
from __future__ import annotations

import numpy as np

from tests.helpers import mlp_bundle


def pretrain_mlp(x: np.ndarray, y: np.ndarray, num_classes: int, seed: int = 0, epochs: int = 30):
    """edgelora_export's MLP and pre-training (datasets/README.md), one thread; returns [(W, b)] as numpy."""
    import torch
    from edgelora_export.models import MLP
    from edgelora_export.pretrain import pretrain
    torch.manual_seed(seed)
    net = pretrain(MLP(x.shape[1], num_classes), x, y, threads=1, epochs=epochs, seed=seed)
    return [(m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy()) for m in (*net.hidden, net.head)]


def write_pretrained_bundle(folder, data: dict, seed: int = 0):
    """Pre-train on the standardised source split and write the bundle (standardisation in the manifest)."""
    xs, ys = data["source"]
    xs = (xs - data["mean"]) / data["std"]
    layers = pretrain_mlp(xs, ys, len(data["classes"]), seed)
    return mlp_bundle(folder, layers, data["classes"], data["mean"], data["std"])
