"""Batch-norm layers kept addressable in the exported ONNX graph, so a device can re-estimate their statistics.

torch's exporter folds an eval-mode BatchNorm into the Conv/Gemm before it (onnxscript's fuse_batchnorm),
after which its running mean and variance exist nowhere in the graph. Here each BatchNorm is swapped, for the
export only, for `Addressable`, which reads its mean and variance from extra graph *inputs* (nothing constant
to fold) and also returns, per sample and channel, the mean of its input and of its input squared (the
*moments* output: enough to re-estimate the statistics over any number of samples, chunk by chunk).
`to_initializers` then turns those inputs into initializers named `bn.<module>.running_mean` /
`bn.<module>.running_var` holding the lab values; a device overrides them (onnxruntime's
SessionOptions.add_initializer) without rewriting the file. The graph with the moments outputs becomes the
bundle's recalibration model; `serving_model` drops them for the backbone itself. The manifest records each
layer (NormSpec).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from torch import nn
from onnx import numpy_helper

from edgelora.files.bundle import NormSpec
from edgelora.graphs.onnx_utils import rename_value, serialize


@dataclass(frozen=True)
class NormPlan:
    """One batch-norm layer of the model, in call order."""
    module: str                 # module name, e.g. "features.1"
    channels: int               # C
    eps: float
    mean: np.ndarray            # lab running mean (C,) float32
    var: np.ndarray             # lab running variance (C,) float32

    @property
    def key(self) -> str:
        return f"bn.{self.module}"


class Holder:
    """What the swapped layers share during one forward: the statistics to use, the moments they saw."""

    def __init__(self):
        self.stats: dict[str, tuple] = {}
        self.moments: dict[str, torch.Tensor] = {}


class WithNorms(nn.Module):
    """forward(*inputs, mean_1, var_1, ...) -> (*TapModel outputs, moments_1, ...); without the statistics
    the layers use their own running buffers (what `verify` compares the exported graph against)."""

    def __init__(self, inner: nn.Module, plans: list[NormPlan], n_inputs: int, holder: Holder):
        super().__init__()
        self.inner, self.norms, self.n_inputs = inner, plans, n_inputs
        self.__dict__["holder"] = holder          # a plain object, not a submodule
        self.plans, self.stats = inner.plans, inner.stats   # the taps and their statistics (verify names them)

    def forward(self, *args):
        inputs, stats = args[:self.n_inputs], args[self.n_inputs:]
        self.holder.stats = {p.module: (stats[2 * i], stats[2 * i + 1]) for i, p in enumerate(self.norms)} if stats else {}
        self.holder.moments = {}
        out = self.inner(*inputs)
        moments = [self.holder.moments[p.module] for p in self.norms]
        self.holder.moments = {}
        return (*out, *moments)

    def remove_hooks(self) -> None:
        self.inner.remove_hooks()


class Addressable(nn.Module):
    """An eval-mode BatchNorm whose statistics come from `holder.stats[name]` (graph inputs at export) or its
    own buffers; records its input's per-sample moments (N, 2 C): channel means, then channel mean squares."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, name: str, holder: Holder):
        super().__init__()
        self.bn, self.name = bn, name
        self.__dict__["holder"] = holder

    def forward(self, x):
        mean, var = self.holder.stats.get(self.name, (self.bn.running_mean, self.bn.running_var))
        axes = tuple(range(2, x.dim()))
        xf = x.float()
        m1, m2 = (xf.mean(dim=axes), (xf * xf).mean(dim=axes)) if axes else (xf, xf * xf)
        self.holder.moments[self.name] = torch.cat([m1, m2], dim=1)
        return nn.functional.batch_norm(x, mean, var, self.bn.weight, self.bn.bias, False, 0.0, self.bn.eps)


def find(model: nn.Module, order: list[str], skip: set[str] = frozenset()) -> list[NormPlan]:
    """The model's BatchNorm layers with running statistics, in call order (`order`: module names as called),
    except those in `skip` (tapped modules keep their hooks)."""
    mods = dict(model.named_modules())
    found = [n for n in order if n and n not in skip and isinstance(mods.get(n), nn.modules.batchnorm._BatchNorm)
             and mods[n].track_running_stats and mods[n].running_mean is not None]
    return [NormPlan(n, int(mods[n].num_features), float(mods[n].eps),
                     mods[n].running_mean.detach().float().numpy().copy(),
                     mods[n].running_var.detach().float().numpy().copy()) for n in found]


@contextlib.contextmanager
def swapped(model: nn.Module, plans: list[NormPlan], holder):
    """Replace each planned BatchNorm by `Addressable` on its parent for the duration; restore afterwards."""
    done = []
    try:
        for p in plans:
            parent_name, _, child = p.module.rpartition(".")
            parent = model.get_submodule(parent_name)
            bn = getattr(parent, child)
            setattr(parent, child, Addressable(bn, p.module, holder))
            done.append((parent, child, bn))
        yield
    finally:
        for parent, child, bn in reversed(done):
            setattr(parent, child, bn)


def stats_inputs(plans: list[NormPlan]) -> tuple[torch.Tensor, ...]:
    """The lab statistics as example inputs: mean_1, var_1, mean_2, var_2, ..."""
    return tuple(torch.from_numpy(a.copy()) for p in plans for a in (p.mean, p.var))


def to_initializers(graph: onnx.GraphProto, plans: list[NormPlan], first: int) -> None:
    """Graph inputs first, first + 1, ... (the statistics) -> initializers bn.<module>.running_mean/_var."""
    extra = list(graph.input)[first:]
    assert len(extra) == 2 * len(plans), (len(extra), len(plans))
    for vi, (name, value) in zip(extra, [(f"{p.key}.running_{w}", getattr(p, w)) for p in plans for w in ("mean", "var")]):
        rename_value(graph, vi.name, name)
        graph.initializer.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
    keep = list(graph.input)[:first]
    del graph.input[:]
    graph.input.extend(keep)


def specs(plans: list[NormPlan]) -> tuple[NormSpec, ...]:
    """The manifest's record of each layer: names of its initializers and moments output, lab statistics."""
    return tuple(NormSpec(name=p.module, channels=p.channels, eps=p.eps, mean_initializer=f"{p.key}.running_mean",
                          var_initializer=f"{p.key}.running_var", moments=f"{p.key}.moments",
                          mean=p.mean.astype(np.float64).tolist(), var=p.var.astype(np.float64).tolist())
                 for p in plans)


def serving_model(blob: bytes, drop: list[str]) -> bytes:
    """The model without the outputs `drop` (the moments) and whatever only they needed: what the device serves.
    The moments' extra readers of each layer's input would keep onnxruntime from fusing Conv + BatchNormalization
    (measured: 1.7x the backbone time at batch 64, docs/recalibration.md)."""
    proto = onnx.load_from_string(blob)
    g = proto.graph
    keep = [o for o in g.output if o.name not in drop]
    del g.output[:]
    g.output.extend(keep)
    needed, nodes = {o.name for o in keep}, []
    for node in reversed(g.node):
        if any(o in needed for o in node.output):
            nodes.append(node)
            needed.update(node.input)
            needed.update(_subgraph_names(node))
    del g.node[:]
    g.node.extend(reversed(nodes))
    for field in (g.initializer, g.value_info):
        kept = [v for v in field if v.name in needed]
        del field[:]
        field.extend(kept)
    return serialize(proto)


def _subgraph_names(node: onnx.NodeProto) -> set[str]:
    """Every tensor name a node's subgraphs (If/Loop/Scan bodies) read."""
    names = set()
    for a in node.attribute:
        for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
            for n in sub.node:
                names.update(n.input)
                names.update(_subgraph_names(n))
    return names
