"""Choosing taps on a torch model and pooling them to vectors (Skip2-LoRA: the input of each layer).

`plan_taps` runs the model eagerly with forward pre-hooks at two batch sizes to learn each candidate
layer's input shape and which dimension is the batch; `plan_statistics` adds, for each feature map pooled to
channel means, its channel standard deviations and (a small one) the map kept whole; `TapModel` wraps the
model so that its forward returns (base output, pooled tap_1, ..., pooled tap_K, statistic_1, ...), which is
what gets exported to ONNX.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from edgelora.files.bundle import FEATURE_MAP_POOLINGS, TAP_STATISTICS, check_tap_names

TAPPABLE = ("Linear", "NonDynamicallyQuantizableLinear", "Conv1d", "Conv2d", "MultiheadAttention")  # auto
CONV = ("Conv1d", "Conv2d", "Conv3d")           # channels first: pooled over the other dims
NOT_LAYERS = ("LayerNorm", "GroupNorm", "Embedding", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "RMSNorm")
# a feature map of at most this many values per sample (channels x positions) is also offered whole
# (statistic "map"): measured in docs/taps.md
MAP_MAX = 1024


@dataclass(frozen=True)
class TapPlan:
    """How one tap is taken and pooled."""
    name: str                   # tap name in the manifest, "<module>.input"
    module: str                 # module whose first input is tapped
    kind: str                   # module class name (for humans)
    pooling: str                # none | mean | masked_mean | one of FEATURE_MAP_POOLINGS
    batch_dim: int              # 0, or 1 for sequence-first layers
    reduce: tuple[int, ...]     # dims averaged away
    width: int                  # d_k after pooling
    aliases: tuple[str, ...] = ()   # other modules reading the same tensor (deduplicated by auto)
    positions: int = 1          # values per channel averaged away (a feature map's positions)


@dataclass(frozen=True)
class StatPlan:
    """A further statistic of a tap's feature map (edgelora.files.bundle.TapStatistic)."""
    tap: str                    # the tap's name
    module: str                 # module whose first input is tapped
    statistic: str              # std | map
    reduce: tuple[int, ...]     # the positions' dims
    width: int


def plan_statistics(plans: list[TapPlan], statistics=TAP_STATISTICS, map_max: int = MAP_MAX) -> list[StatPlan]:
    """The statistics offered beside each feature-map tap pooled to channel means: the channel standard
    deviations ("std"), and the map itself ("map") when it holds at most `map_max` values per sample."""
    unknown = [s for s in statistics if s not in TAP_STATISTICS]
    if unknown:
        raise ValueError(f"`statistics` should be among {TAP_STATISTICS}, found {unknown}")
    out = []
    for p in plans:
        if p.kind in CONV and p.pooling == "global_avg":
            if "std" in statistics:
                out.append(StatPlan(p.name, p.module, "std", p.reduce, p.width))
            if "map" in statistics and p.width * p.positions <= map_max:
                out.append(StatPlan(p.name, p.module, "map", p.reduce, p.width * p.positions))
    return out


def statistic(t: torch.Tensor, plan: StatPlan) -> torch.Tensor:
    """(batch, width) of a feature map: its channel standard deviations (as global_avg_std's), or the map
    flattened channel-major."""
    t = t.float()
    if plan.statistic == "map":
        return t.flatten(1)
    mean = t.mean(dim=plan.reduce, keepdim=True)
    return ((t - mean) ** 2).mean(dim=plan.reduce).sqrt()


def plan_taps(model: nn.Module, args: tuple, taps="auto", mask_index: int | None = None,
              kinds: dict[str, str] | None = None, pooling: str = "global_avg", output=None) -> list[TapPlan]:
    """Find the taps: `"auto"` (every Linear/Conv1d/Conv2d/MultiheadAttention input whose layer's output
    reaches the base output) or module names. pooling: how conv feature maps are pooled
    (FEATURE_MAP_POOLINGS); token sequences are averaged. output: which output is the base one (select_output).

    kinds: module name -> layer class name, where the modules are not the original classes (a .pt2
    program's unflattened modules); by default each module's own class name.
    """
    first, seen, order = _record(model, args), _record(model, _grow(args)), []
    calls = {name: t for name, t in first}
    more = dict(seen)
    available = [name for name, t in first if name in more]        # "" = the model itself
    modules = dict(model.named_modules())
    kinds = {**{n: type(m).__name__ for n, m in modules.items()}, **(kinds or {})}
    if taps == "auto":
        chosen = [n for n in available if kinds[n] in TAPPABLE and not _inside_attention(n, kinds)]
        chosen = [n for n in chosen if n not in _unused(model, args, chosen, output)]
        _warn_untapped(modules, kinds, set(chosen))
        if not chosen:
            raise ValueError(f"auto taps found no Linear/Conv1d/Conv2d/MultiheadAttention layer with a "
                             f"float input; name taps explicitly (available: {available or 'none'})")
    else:
        names = [taps] if isinstance(taps, str) else list(taps)
        chosen = [n[:-len(".input")] if n.endswith(".input") and n[:-len(".input")] in modules else n for n in names]
        check_tap_names(chosen, available, "module names whose input is a float tensor that depends on the batch; "
                                           f"available: {[n for n in available if n]}")
    if pooling not in FEATURE_MAP_POOLINGS:
        raise ValueError(f"`pooling` should be one of {FEATURE_MAP_POOLINGS}, found {pooling!r}")
    mask = args[mask_index] if mask_index is not None else None
    for name in chosen:
        twin = next((p for p in order if calls[p.module] is calls[name]), None)
        if taps == "auto" and twin is not None:   # q/k/v projections read one tensor: one tap
            order[order.index(twin)] = TapPlan(**{**twin.__dict__, "aliases": twin.aliases + (name,)})
            continue
        order.append(_plan(name, kinds[name], calls[name].shape, more[name].shape, mask, pooling))
    return order


def pool(t: torch.Tensor, plan: TapPlan, mask: torch.Tensor | None) -> torch.Tensor:
    """(batch, width) from a tapped tensor: mean over plan.reduce (masked over tokens if asked), plus the
    standard deviation, or means of segments, for feature maps."""
    t = t.float()
    if plan.pooling == "global_avg_std":
        mean = t.mean(dim=plan.reduce, keepdim=True)
        std = ((t - mean) ** 2).mean(dim=plan.reduce).sqrt()
        return torch.cat([mean.flatten(1), std], dim=1)                           # (N, 2 C): means, then stds
    if plan.pooling.startswith("segment_avg_"):
        s, length = int(plan.pooling.rsplit("_", 1)[1]), t.shape[2]
        cuts = [i * length // s for i in range(s + 1)]                          # as adaptive average pooling
        parts = [t[:, :, a:b].mean(dim=plan.reduce) for a, b in zip(cuts[:-1], cuts[1:])]
        return torch.stack(parts, dim=2).flatten(1)                             # (N, C S): channel-major
    if plan.pooling == "masked_mean":
        w = mask.to(t.dtype)                                   # (N, L): nonzero = a real token
        if plan.batch_dim == 1:
            w = w.transpose(0, 1)
        w = w.unsqueeze(-1)
        return (t * w).sum(dim=plan.reduce) / w.sum(dim=plan.reduce).clamp(min=1.0)
    return t.mean(dim=plan.reduce) if plan.reduce else t


class TapModel(nn.Module):
    """forward(*inputs) -> (base output (N, C), tap_1 (N, d_1), ..., tap_K (N, d_K), statistic_1, ...)."""

    def __init__(self, model: nn.Module, plans: list[TapPlan], output=None, mask_index: int | None = None,
                 stats: list[StatPlan] = ()):
        super().__init__()
        self.model, self.plans, self.output, self.mask_index, self.stats = model, plans, output, mask_index, list(stats)
        self._seen: dict[str, torch.Tensor] = {}
        self._handles = [model.get_submodule(p.module).register_forward_pre_hook(self._hook(p.module), with_kwargs=True)
                         for p in plans]

    def _hook(self, name: str):
        def hook(module, args, kwargs):
            if name not in self._seen:
                self._seen[name] = _first_tensor(args, kwargs)
        return hook

    def forward(self, *inputs):
        self._seen.clear()
        y = select_output(self.model(*inputs), self.output)
        mask = inputs[self.mask_index] if self.mask_index is not None else None
        taps = [pool(self._seen[p.module], p, mask) for p in self.plans] + \
            [statistic(self._seen[p.module], p) for p in self.stats]
        self._seen.clear()
        return (y, *taps)

    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()


def select_output(out, which=None) -> torch.Tensor:
    """The one base output: a tensor, `which` of a tuple/dict, or a Hugging Face output's `logits`."""
    if isinstance(out, torch.Tensor):
        y = out
    elif isinstance(out, dict):
        key = which if which is not None else ("logits" if "logits" in out else None)
        if key not in out:
            raise ValueError(f"the model returns several outputs {list(out)}; choose the base output with "
                             f"output=<key>")
        y = out[key]
    elif isinstance(out, (tuple, list)):
        if not isinstance(which, int) or not -len(out) <= which < len(out):
            raise ValueError(f"the model returns {len(out)} outputs; exactly one base output is needed: "
                             f"choose it with output=<index>")
        y = out[which]
    else:
        raise TypeError(f"the model should return a tensor, found {type(out).__name__}")
    if not isinstance(y, torch.Tensor) or y.ndim != 2 or not y.is_floating_point():
        raise ValueError(f"the base output should be a float tensor of shape (batch, outputs), found "
                         f"{getattr(y, 'dtype', type(y).__name__)} {tuple(getattr(y, 'shape', ()))}")
    return y


def _plan(name: str, kind: str, shape: torch.Size, shape2: torch.Size, mask, pooling: str) -> TapPlan:
    diff = [i for i, (a, b) in enumerate(zip(shape, shape2)) if a != b]
    if len(diff) != 1 or diff[0] > 1 or len(shape) < 2:
        raise ValueError(f"tap `{name}` ({kind}): cannot find its batch dimension in input shape {tuple(shape)} "
                         f"(expected batch first, or second for sequence-first layers)")
    b = diff[0]
    if kind in CONV:
        if b != 0:
            raise ValueError(f"tap `{name}` ({kind}): expected the batch first in {tuple(shape)}")
        reduce, width, positions = tuple(range(2, len(shape))), shape[1], math.prod(shape[2:])
        if pooling.startswith("segment_avg_") and shape[2] < int(pooling.rsplit("_", 1)[1]):
            pooling = "global_avg"             # fewer positions than segments: the mean is all there is
        width *= 2 if pooling == "global_avg_std" else \
            int(pooling.rsplit("_", 1)[1]) if pooling.startswith("segment_avg_") else 1
    else:
        reduce = tuple(i for i in range(len(shape) - 1) if i != b)
        width, pooling, positions = shape[-1], "mean", 1
        if mask is not None and len(reduce) == 1 and shape[reduce[0]] == mask.shape[-1]:
            pooling = "masked_mean"
    if not reduce:
        pooling = "none"
    return TapPlan(f"{name}.input" if name else "input", name, kind, pooling, b, reduce, int(width),
                   positions=positions)


def _record(model: nn.Module, args: tuple) -> list[tuple[str, torch.Tensor]]:
    """(module name, its first float input) for every module call, in call order (first call only)."""
    seen: dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(module, a, kw):
            t = _first_tensor(a, kw)
            if name not in seen and isinstance(t, torch.Tensor) and t.is_floating_point():
                seen[name] = t
        return fn
    handles = [m.register_forward_pre_hook(hook(n), with_kwargs=True) for n, m in model.named_modules()]
    try:
        with torch.no_grad():
            model(*args)
    finally:
        for h in handles:
            h.remove()
    return list(seen.items())


def _unused(model: nn.Module, args: tuple, names: list[str], output=None) -> set[str]:
    """The modules among `names` whose output never reaches the base output (BERT's pooler under a head that
    reads the tokens): their input is no feature of the model, so auto taps leave them out. Found with
    autograd; a module whose output needs no gradient (frozen weights, integer outputs) counts as used."""
    outs: dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(module, a, out):
            t = out[0] if isinstance(out, (tuple, list)) and out else out
            if name not in outs and isinstance(t, torch.Tensor) and t.requires_grad:
                outs[name] = t
        return fn
    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    try:
        with torch.enable_grad():
            y = select_output(model(*args), output)
            if not outs or not y.requires_grad:
                return set()
            grads = torch.autograd.grad(y.sum(), list(outs.values()), allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    return {name for name, g in zip(outs, grads) if g is None}


def _first_tensor(args, kwargs):
    if args:
        return args[0]
    for key in ("input", "x", "query", "hidden_states"):
        if key in kwargs:
            return kwargs[key]
    return next(iter(kwargs.values()), None)


def _grow(args: tuple) -> tuple:
    """The same inputs with one more sample (its first row repeated): reveals the batch dimension."""
    return tuple(torch.cat([a, a[:1]]) if isinstance(a, torch.Tensor) else a for a in args)


def _inside_attention(name: str, kinds: dict) -> bool:
    """out_proj of nn.MultiheadAttention: its weights are used directly, its hooks never fire in export."""
    parent = name.rsplit(".", 1)[0] if "." in name else ""
    return parent != name and kinds.get(parent) == "MultiheadAttention"


def _warn_untapped(modules: dict, kinds: dict, chosen: set) -> None:
    skipped = [f"{n} ({kinds[n]})" for n, m in modules.items()
               if n and n not in chosen and any(True for _ in m.parameters(recurse=False))
               and kinds[n] not in TAPPABLE + NOT_LAYERS]
    if skipped:
        warnings.warn(f"auto taps cover Linear, Conv1d, Conv2d and MultiheadAttention only; layers with weights "
                      f"not tapped: {', '.join(skipped)} (name them explicitly to tap their inputs)", stacklevel=3)
