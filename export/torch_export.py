"""torch.nn.Module + example input -> backbone bundle (ONNX with pooled taps + manifest), verified.

Uses torch's default (dynamo) ONNX exporter in one file (external_data=False), then rewrites the graph
to opset 17 / IR 8 with fixed input and output names, checks onnxruntime against torch on the example
and on random inputs, and writes the bundle atomically (edgelora.files.bundle.write_bundle).
"""
from __future__ import annotations

import contextlib
import inspect
import io
import logging
import warnings
from typing import Literal, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from edgelora.files.bundle import (BUNDLE_FORMAT_VERSION, InputSpec, Manifest, OutputSpec, TapSpec,
                                   TapStatistic, as_preprocess, write_bundle)
from edgelora.files.fileio import PathLike
from edgelora.graphs.onnx_utils import OPSET, conservative, rename_value, serialize, set_outputs

from . import batchnorm
from .taps import MAP_MAX, TapModel, _record, plan_statistics, plan_taps
from .torch_names import torch_weights

TOLERANCE = 1e-4          # max |onnxruntime - torch| allowed, relative to max(1, max |torch|)
RANDOM_TRIALS = 2         # random input batches checked after the example
STATEFUL = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm, nn.AlphaDropout)
DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.float64: "float64", torch.int64: "int64",
          torch.int32: "int32", torch.bool: "bool"}


def export_model(model: nn.Module, example, out: PathLike, taps: str | Sequence[str] = "auto", *,
                 task: Literal["classification", "regression"] = "classification",
                 classes: Sequence[str] | None = None, preprocess: dict | None = None,
                 input_names: Sequence[str] | None = None, attention_mask: str | None = None,
                 output=None, seed: int = 0, kinds: dict[str, str] | None = None,
                 pooling: str = "global_avg", statistics: Sequence[str] = (),
                 map_max: int = MAP_MAX) -> Manifest:
    """Export `model` (called as model(*example)) to a bundle folder `out`; returns its manifest.

    example: one tensor/array or a tuple of them (batch first). taps: "auto" or module names.
    preprocess: {input name: {"mean": m, "std": s} or (mean, std)}: the device computes (x - mean) / std
        before the graph. Input names are forward's argument names (`input` for an nn.Sequential) or input_names.
    attention_mask: name of the input holding a (batch, tokens) mask (nonzero = real token); token
    sequences are then averaged over real tokens only. output: which output, if the model returns several.
    kinds: module name -> layer class name when the modules are stand-ins (see edgelora_export.spec for .pt2).
    pooling: conv feature maps -> vectors (edgelora.files.bundle.FEATURE_MAP_POOLINGS): the channel means, means and
    standard deviations, or the means of 2/4/8 segments along the first spatial axis.
    statistics: what the bundle also offers of each feature map pooled to channel means, for adapters to read
    if the data says so (`tap_statistics`, docs/taps.md): "std" (channel standard deviations) and "map" (the
    map whole, when it has at most `map_max` values); () for none.
    """
    args = _as_args(example)
    names = list(input_names or _arg_names(model, len(args)))
    if len(names) != len(args):
        raise ValueError(f"expected {len(args)} input names (one per example input), found {names}")
    mask_index = _mask_index(attention_mask, names)
    _warn_unmasked(names, mask_index)
    pre = as_preprocess(preprocess, names)      # before the slow export: a wrong name fails at once
    base = "logits" if task == "classification" else "values"
    with _eval_mode(model), _no_fastpath():
        plans = plan_taps(model, args, taps, mask_index, kinds, pooling, output)
        stats = plan_statistics(plans, tuple(statistics), map_max)
        norms = batchnorm.find(model, [n for n, _ in _record(model, args)], {p.module for p in plans})
        holder = batchnorm.Holder()
        with batchnorm.swapped(model, norms, holder):
            wrapper = TapModel(model, plans, output, mask_index, stats).eval()
            if norms:    # without batch-norm layers the graph (and its initializer names) stays as before
                wrapper = batchnorm.WithNorms(wrapper, norms, len(args), holder).eval()
            try:
                y = wrapper(*args)[0]
                proto = _to_onnx(wrapper, args + batchnorm.stats_inputs(norms), names,
                                 len(plans) + len(stats) + len(norms))
                # the user's weights are named after the wrapper's path to the model
                weights = torch_weights(model, proto, "inner.model." if norms else "model.")
                batchnorm.to_initializers(proto.graph, norms, len(names))
                moments = [f"{p.key}.moments" for p in norms]
                full, outputs = _finish(proto, names, [base] + [f"tap.{p.name}" for p in plans] +
                                        [f"stat.{p.tap}.{p.statistic}" for p in stats] + moments)
                blob = batchnorm.serving_model(full, moments) if norms else full
                diffs = verify(wrapper, blob, args, names, seed)
                if norms:  # the recalibration model: the same outputs, and the moments
                    verify(wrapper, full, args, names, seed)
            finally:
                wrapper.remove_hooks()
    c = int(y.shape[1])
    manifest = Manifest(
        format_version=BUNDLE_FORMAT_VERSION, fingerprint="sha256:" + "0" * 64,
        inputs=tuple(InputSpec(n, ("batch", *[int(s) for s in a.shape[1:]]), DTYPES[a.dtype]) for n, a in zip(names, args)),
        output=OutputSpec(base, c),
        taps=tuple(TapSpec(p.name, o, p.width, p.pooling, ", ".join((p.module,) + p.aliases) + f" ({p.kind})")
                   for p, o in zip(plans, outputs[1:])), normalization=batchnorm.specs(norms),
        tap_statistics=tuple(TapStatistic(p.tap, p.statistic, o, p.width)
                             for p, o in zip(stats, outputs[1 + len(plans):])),
        task=task, classes=tuple(classes) if classes is not None else
        (tuple(str(i) for i in range(c)) if task == "classification" else ()),
        preprocess=pre, opset=OPSET, torch_weights=weights,
        producer={"name": "edgelora.export", "torch": torch.__version__, "onnx": onnx.__version__,
                  "max_rel_diff": f"{max(diffs[:1 + len(plans)]):.3g}"})
    return write_bundle(out, blob, manifest, recalibration_bytes=full if norms else None)


def verify(wrapper: nn.Module, blob: bytes, args: tuple, names: list[str], seed: int = 0) -> list[float]:
    """Run onnxruntime and torch on the example and random inputs; raise ValueError on any mismatch.

    Returns the worst relative difference per output (base output first, then the taps).
    """
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(seed)
    worst = None
    for trial, inputs in enumerate([args] + [_random_like(args, gen) for _ in range(RANDOM_TRIALS)]):
        with torch.no_grad():
            want = [t.numpy() for t in wrapper(*inputs)]
        got = session.run(None, {n: a.numpy() for n, a in zip(names, inputs)})
        diffs = [float(np.abs(g - w).max() / max(1.0, float(np.abs(w).max()))) if w.size else 0.0
                 for g, w in zip(got, want)]
        what = "the example" if trial == 0 else f"random input {trial}"
        bad = [i for i, d in enumerate(diffs) if not d <= TOLERANCE]
        if bad:
            named = ["base output"] + [f"tap `{p.name}`" for p in wrapper.plans] + \
                [f"tap statistic `{p.tap}:{p.statistic}`" for p in wrapper.stats]
            which = [named[i] if i < len(named) else "batch-norm moments" for i in bad]
            raise ValueError(f"onnxruntime and torch disagree on {what}: {', '.join(which)} differ by up to "
                             f"{max(diffs[i] for i in bad):.3g} (relative; allowed {TOLERANCE}). The model may "
                             f"be non-deterministic (random ops) or use an op the exporter translates inexactly")
        worst = diffs if worst is None else [max(a, b) for a, b in zip(worst, diffs)]
    return worst


def _to_onnx(wrapper: nn.Module, args: tuple, names: list[str], k: int) -> onnx.ModelProto:
    """torch.onnx.export (dynamo) with a dynamic batch dimension, as one in-memory ModelProto. Inputs beyond
    `names` (batch-norm statistics) have no batch dimension."""
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    dynamic = (tuple({0: batch} if i < len(names) else None for i in range(len(args))),)  # forward(*inputs): one entry
    quiet = io.StringIO()
    # onnxscript's optimizer logs a warning for every constant it cannot fold ("Evaluation failed: ..."): the
    # node is kept as it is and the result is still verified against torch below, so these are not failures
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(wrapper, args, dynamo=True, external_data=False, opset_version=18,
                                        input_names=names, output_names=["output"] + [f"tap{i}" for i in range(k)],
                                        dynamic_shapes=dynamic, optimize=True, verbose=False)
    except Exception as e:
        raise ValueError(f"torch could not export the model to ONNX: {_short_error(e)}") from e
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
    return program.model_proto


def _finish(proto: onnx.ModelProto, names: list[str], outputs: list[str]) -> tuple[bytes, list[str]]:
    """Opset 17 / IR 8, our input names (the exporter renames an input that is also an output), one
    Identity per output (two taps of the same tensor, or a tap of an input, would otherwise clash)."""
    graph = proto.graph
    for vi, name in zip(list(graph.input), names):
        if vi.name != name:
            rename_value(graph, vi.name, name)
    sources = [o.name for o in graph.output]
    tmp = [f"edgelora_tmp_{i}" for i in range(len(outputs))]
    set_outputs(graph, sources, tmp)          # two steps: a wanted name may already name another tensor
    for t, name in zip(tmp, outputs):
        rename_value(graph, t, name)
    for node in graph.node:            # the exporter's per-node stack traces hold local file paths:
        del node.metadata_props[:]     # drop them so the same weights give the same bytes anywhere
        node.ClearField("doc_string")
    proto = conservative(proto)
    return serialize(proto), outputs


def _short_error(e: Exception) -> str:
    """The exporter's own summary line(s) ("<class ...>: what failed"), without its boilerplate."""
    text = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    keep = [line for line in text if line.startswith("<class ") or "Unsupported" in line or "aten." in line]
    return " ".join((keep or text[-3:] or [type(e).__name__])[:4])[:1000]


def _as_args(example) -> tuple:
    items = example if isinstance(example, (tuple, list)) else (example,)
    args = []
    for i, a in enumerate(items):
        t = torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"example input {i}: expected a tensor or numpy array, found {type(a).__name__}")
        if t.dtype not in DTYPES or t.ndim < 1 or len(t) < 1:
            raise ValueError(f"example input {i}: expected a batch (first dim >= 1) of {sorted(DTYPES.values())}, "
                             f"found {t.dtype} {tuple(t.shape)}")
        args.append(t.detach().cpu())
    if len({len(a) for a in args}) != 1:
        raise ValueError(f"example inputs should share the batch size, found {[len(a) for a in args]}")
    if len(args[0]) < 2:  # a batch of 1 lets torch.export specialise the batch dimension to 1
        args = [torch.cat([a, a]) for a in args]
    return tuple(args)


def forward_parameters(model: nn.Module) -> list[str] | None:
    """Names of forward's positional parameters, or None when it takes *args (any number) or has no signature."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _arg_names(model: nn.Module, n: int) -> list[str]:
    params = forward_parameters(model) or []
    return params[:n] if len(params) >= n else ["x"] if n == 1 else [f"input{i}" for i in range(n)]


def _mask_index(name: str | None, names: list[str]) -> int | None:
    if name is None:
        return None
    if name not in names:
        raise ValueError(f"attention_mask `{name}` is not an input; inputs are {names}")
    return names.index(name)


def _warn_unmasked(names: list[str], mask_index: int | None) -> None:
    """An input named like a mask, exported without attention_mask: token taps would average the padding."""
    masks = [n for n in names if "mask" in n.lower()]
    if mask_index is None and masks:
        warnings.warn(f"input {masks[0]!r} looks like an attention mask, but none was given: token taps average "
                      f"padding tokens too; pass attention_mask={masks[0]!r} (CLI: --attention-mask {masks[0]}) "
                      f"if it marks the real tokens", stacklevel=3)


def _random_like(args: tuple, gen: torch.Generator) -> tuple:
    """3 samples: floats ~ N(mean, std) of the example; other inputs (ids, masks) = random example rows."""
    rows = torch.randint(0, len(args[0]), (3,), generator=gen)
    out = []
    for a in args:
        if a.is_floating_point():
            std = float(a.float().std()) if a.numel() > 1 else 1.0
            r = torch.randn((3, *a.shape[1:]), generator=gen) * (std or 1.0) + float(a.float().mean())
            out.append(r.to(a.dtype))
        else:
            out.append(a[rows].clone())
    return tuple(out)


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    """Export in eval mode (the Skip-Cache needs a deterministic backbone); restore the caller's modes."""
    modes = {m: m.training for m in model.modules()}
    active = [f"{n} ({type(m).__name__})" for n, m in model.named_modules() if m.training and isinstance(m, STATEFUL)]
    if active:
        warnings.warn(f"the model was in training mode with {', '.join(active)}: exported in eval mode (dropout "
                      f"off, batch-norm running statistics frozen); call model.eval() first to silence this",
                      stacklevel=4)
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


@contextlib.contextmanager
def _no_fastpath():
    """nn.MultiheadAttention/TransformerEncoderLayer fast paths skip submodule calls (and so the taps)."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)
