"""The backbone as the torch model a user would fine-tune: nn.Sequential of nn.Linear/nn.Conv*/nn.ReLU/
pooling, with the bundle's weights, plus LoRA written plainly (PEFT's conventions: A kaiming-uniform,
B zero, scale alpha / r; conv LoRA = k-sized conv to r channels then 1x1 conv). Imported only by the
torch methods' worker processes."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgelora.core.chain import Chain, Op, reshape_like


class Mean(nn.Module):
    def __init__(self, axes, keepdims: bool):
        super().__init__()
        self.axes, self.keepdims = axes, keepdims

    def forward(self, x):
        return x.mean(dim=self.axes if self.axes is not None else tuple(range(2, x.ndim)), keepdim=self.keepdims)


class Permute(nn.Module):
    def __init__(self, perm):
        super().__init__()
        self.perm = perm

    def forward(self, x):
        return x.permute(*self.perm)


class Reshape(nn.Module):
    """Reshape/Flatten/(Un)Squeeze of the chain, computed from the numpy rule on a shape probe."""
    def __init__(self, op: Op):
        super().__init__()
        self.op = op

    def forward(self, x):
        shape = reshape_like(np.empty(x.shape, np.float32), self.op).shape
        return x.reshape(shape)


class LoRA(nn.Module):
    """base(x) + scale * B(A(x)) with base frozen."""
    def __init__(self, base: nn.Module, r: int, alpha: float):
        super().__init__()
        self.base, self.scale = base.requires_grad_(False), alpha / r
        if isinstance(base, nn.Linear):
            self.A = nn.Linear(base.in_features, r, bias=False)
            self.B = nn.Linear(r, base.out_features, bias=False)
        else:
            conv = type(base)
            self.A = conv(base.in_channels, r, base.kernel_size, stride=base.stride, padding=base.padding, bias=False)
            self.B = conv(r, base.out_channels, 1, bias=False)
        nn.init.kaiming_uniform_(self.A.weight, a=5 ** 0.5)   # PEFT: bound 1 / sqrt(fan_in)
        nn.init.zeros_(self.B.weight)

    def forward(self, x):
        return self.base(x) + self.scale * self.B(self.A(x))


class Affine(nn.Module):
    """Inference-mode batch-norm: x a + c per channel (axis 1), frozen."""

    def __init__(self, a: np.ndarray, c: np.ndarray):
        super().__init__()
        self.register_buffer("a", torch.from_numpy(a.copy()))
        self.register_buffer("c", torch.from_numpy(c.copy()))

    def forward(self, x):
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.a.view(shape) + self.c.view(shape)


def build(chain: Chain) -> nn.Sequential:
    """The chain as nn.Sequential with the bundle's weights (eval mode; batch-norm as its frozen affine map)."""
    layers = []
    for op in chain.ops:
        if op.kind in ("linear", "conv"):
            w, b = chain.weights[op.layer]
            if op.kind == "linear":
                m = nn.Linear(*w.shape)
                m.weight.data = torch.from_numpy(np.ascontiguousarray(w.T)).clone()
            else:
                conv = {3: nn.Conv1d, 4: nn.Conv2d}[w.ndim]
                m = conv(w.shape[1], w.shape[0], w.shape[2:], stride=op.attrs["strides"], padding=op.attrs["pads"])
                m.weight.data = torch.from_numpy(w).clone()
            m.bias.data = torch.from_numpy(b).clone()
            layers.append(m)
        elif op.kind == "relu":
            layers.append(nn.ReLU())
        elif op.kind == "affine":
            layers.append(Affine(op.attrs["a"], op.attrs["c"]))
        elif op.kind == "maxpool":
            layers.append({1: nn.MaxPool1d, 2: nn.MaxPool2d}[len(op.attrs["k"])](op.attrs["k"]))
        elif op.kind == "mean":
            layers.append(Mean(op.attrs["axes"], op.attrs["keepdims"]))
        elif op.kind == "transpose":
            layers.append(Permute(op.attrs["perm"]))
        else:
            layers.append(Reshape(op))
    return nn.Sequential(*layers)


def weight_layers(net: nn.Sequential) -> list[int]:
    """Indices in `net` of the Linear/Conv layers, in order (the chain's weight layers)."""
    return [i for i, m in enumerate(net) if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]


def with_lora(net: nn.Sequential, layers: list[int], r: int, alpha: float) -> nn.Sequential:
    """Freeze `net` (all but LoRA adapters already there) and wrap the given indices in LoRA (in place)."""
    for m in net:
        if not isinstance(m, LoRA):
            m.requires_grad_(False)
    for i in layers:
        net[i] = LoRA(net[i], r, alpha)
    return net
