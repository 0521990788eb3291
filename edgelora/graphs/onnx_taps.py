"""An existing ONNX model -> backbone bundle, without torch (runs on the device too).

Taps are graph tensors: `auto` takes the input of every MatMul/Gemm/Conv whose weights are constants
(the Skip2-LoRA taps: the input of each layer with weights), or name tensors explicitly. Taps of more
than two dimensions are pooled inside the graph (global average for convolution inputs, mean or masked
mean over tokens otherwise), so every tap output is (batch, width). The model is converted to opset 17 /
IR 8 where onnx's version converter can, and the same manifest as `export/` writes is produced.
"""
from __future__ import annotations

import ast
import re
import warnings
from typing import Literal, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from ..files.bundle import (BUNDLE_FORMAT_VERSION, FEATURE_MAP_POOLINGS, InputSpec, Manifest, OutputSpec, TapSpec,
                            as_preprocess, check_tap_names, write_bundle)
from ..files.fileio import PathLike
from .onnx_utils import (OPSET, add_const, conservative, default_opset, load, mean_node, serialize, set_outputs,
                         sum_node, unique_name)

WEIGHTED_OPS = ("MatMul", "Gemm", "Conv")
DTYPES = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.DOUBLE: "float64",
          TensorProto.INT64: "int64", TensorProto.INT32: "int32", TensorProto.BOOL: "bool"}


def add_taps(model, out: PathLike, taps: str | Sequence[str] = "auto", *, output: str | None = None,
             task: Literal["classification", "regression"] = "classification", classes: Sequence[str] | None = None,
             preprocess: dict | None = None, attention_mask: str | None = None,
             pooling: str = "global_avg") -> Manifest:
    """Add pooled tap outputs to an ONNX model (path, bytes or ModelProto) and write a bundle to `out`.

    taps: "auto" or tensor names. output: the base output when the graph has several.
    attention_mask: name of a (batch, tokens) input, nonzero = real token, for masked mean pooling.
    pooling: how Conv inputs (N, C, L...) are pooled: one of FEATURE_MAP_POOLINGS (as export_model).
    """
    if pooling not in FEATURE_MAP_POOLINGS:
        raise ValueError(f"`pooling` should be one of {FEATURE_MAP_POOLINGS}, found {pooling!r}")
    original = load(model)
    owners = {n.input[0]: _module_of(n) for n in original.graph.node if n.op_type in WEIGHTED_OPS and n.input}
    proto = _versioned(original)          # (the version converter drops node metadata: read owners first)
    graph = proto.graph
    base = _base_output(graph, output)
    shapes = _shapes(proto)
    inits = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    feeds = [i for i in graph.input if i.name not in inits]
    if attention_mask is not None and attention_mask not in {i.name for i in feeds}:
        raise ValueError(f"attention_mask `{attention_mask}` is not a graph input; inputs are {[i.name for i in feeds]}")
    batch = {_dims(i)[0] for i in feeds if _dims(i)}
    found = _candidates(graph, inits, shapes, batch)
    tensors = _choose(taps, found, shapes, batch)
    opset = default_opset(proto)
    specs, sources = _add_pooling(graph, tensors, owners, shapes, pooling, attention_mask, opset)
    base_width = shapes.get(base)
    if base_width is None or len(base_width) != 2 or not isinstance(base_width[1], int):
        raise ValueError(f"base output `{base}` should have shape (batch, outputs), shape inference gives {base_width}")
    set_outputs(graph, [base] + sources, [base] + [s.output for s in specs],
                {s.output: ["batch", s.width] for s in specs})
    _dynamic_batch(graph, feeds)
    blob = serialize(proto)
    _check_runs(blob, feeds, base)
    c = base_width[1]
    manifest = Manifest(
        format_version=BUNDLE_FORMAT_VERSION, fingerprint="sha256:" + "0" * 64,
        inputs=tuple(InputSpec(i.name, ("batch", *_dims(i)[1:]), _dtype(i)) for i in feeds),
        output=OutputSpec(base, c), taps=tuple(specs), task=task,
        classes=tuple(classes) if classes is not None else (tuple(str(i) for i in range(c)) if task == "classification" else ()),
        preprocess=as_preprocess(preprocess, [i.name for i in feeds]),
        opset=opset, producer={"name": "edgelora.graphs.onnx_taps", "onnx": onnx.__version__})
    return write_bundle(out, blob, manifest)


def _add_pooling(graph, tensors: list[str], owners: dict, shapes: dict, pooling: str, attention_mask: str | None,
                 opset: int) -> tuple[list[TapSpec], list[str]]:
    """Pooling nodes from each tapped tensor to a (batch, width) tap: (the taps' specs, their pooled values)."""
    conv_inputs = {n.input[0] for n in graph.node if n.op_type == "Conv"}
    specs, sources = [], []
    for name, tensor in zip(_tap_names(tensors, owners), tensors):
        shape = shapes.get(tensor)
        if shape is None or len(shape) < 2 or not isinstance(shape[-1 if tensor not in conv_inputs else 1], int):
            raise ValueError(f"tap `{tensor}`: shape inference gives {shape}; expected (batch, ..., width) with a "
                             f"known width")
        src, how, width = _pool(graph, tensor, shape, pooling if tensor in conv_inputs else None, attention_mask,
                                shapes.get(attention_mask, [None, None])[1] if attention_mask else None, opset)
        specs.append(TapSpec(name, f"tap.{name}", width, how, tensor))
        sources.append(src)
    return specs, sources


def _versioned(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Opset 17 / IR 8 where the converter can (older models are upgraded, newer ones downgraded)."""
    have = default_opset(proto)
    if have < OPSET:
        try:
            proto = onnx.version_converter.convert_version(proto, OPSET)
        except Exception as e:
            warnings.warn(f"kept opset {have}: upgrading to {OPSET} failed ({e})", stacklevel=3)
    return conservative(proto, strict=False)


def _base_output(graph: onnx.GraphProto, output: str | None) -> str:
    outs = [o.name for o in graph.output]
    if output is None:
        if len(outs) != 1:
            raise ValueError(f"the model has {len(outs)} outputs {outs}; exactly one base output is needed: "
                             f"choose it with output=<name>")
        return outs[0]
    if output not in outs:
        raise ValueError(f"output `{output}` is not a graph output; outputs are {outs}")
    return output


def _shapes(proto: onnx.ModelProto) -> dict[str, list]:
    """tensor name -> dims (int, or str for symbolic/unknown) after onnx shape inference."""
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception as e:
        raise ValueError(f"onnx shape inference failed on the model ({e})") from None
    g = inferred.graph
    return {vi.name: _dims(vi) for vi in list(g.input) + list(g.value_info) + list(g.output)
            if vi.type.tensor_type.HasField("shape")}


def _dims(vi: onnx.ValueInfoProto) -> list:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in vi.type.tensor_type.shape.dim]


def _dtype(vi: onnx.ValueInfoProto) -> str:
    t = vi.type.tensor_type.elem_type
    if t not in DTYPES:
        raise ValueError(f"input `{vi.name}` has ONNX type {TensorProto.DataType.Name(t)}; expected one of {list(DTYPES.values())}")
    return DTYPES[t]


def _candidates(graph: onnx.GraphProto, inits: set, shapes: dict, batch: set) -> dict[str, onnx.NodeProto]:
    """Auto taps: tensor -> first node with constant weights that reads it (in graph order); only
    batch-first tensors (attention internals are often sequence-first)."""
    found = {}
    for node in graph.node:
        x = node.input[0] if node.input else ""
        if node.op_type in WEIGHTED_OPS and len(node.input) >= 2 and node.input[1] in inits \
                and x not in inits and shapes.get(x) and shapes[x][0] in batch:
            found.setdefault(x, node)
    return found


def _choose(taps, found: dict, shapes: dict, batch: set) -> list[str]:
    if taps == "auto":
        if not found:
            raise ValueError("auto taps found no MatMul/Gemm/Conv with constant weights; name tensors explicitly")
        return list(found)
    names = [taps] if isinstance(taps, str) else list(taps)
    check_tap_names(names, shapes, f"tensor names of the graph; the inputs of layers with weights are: {list(found)}")
    later = [n for n in names if shapes[n][:1] and shapes[n][0] not in batch]
    if later:
        raise ValueError(f"tap tensor(s) {later} do not have the batch dimension first (shapes "
                         f"{[shapes[n] for n in later]}); tap a batch-first tensor")
    return names


def _tap_names(tensors: list[str], owners: dict) -> list[str]:
    """'fc1.input' from the module that owns the layer (torch exporters record it: node metadata
    `pkg.torch.onnx.name_scopes`, or node names like '/fc1/Gemm'); else the tensor's name."""
    out = []
    for tensor in tensors:
        module = owners.get(tensor, "")
        name = module + ".input" if module else re.sub(r"[^\w.:-]", "_", tensor)
        base, i = name, 1
        while name in out:
            i += 1
            name = f"{base}_{i}"
        out.append(name)
    return out


def _module_of(node: onnx.NodeProto) -> str:
    meta = {p.key: p.value for p in node.metadata_props}
    try:
        scopes = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))
    except (ValueError, SyntaxError):
        scopes = []
    if len(scopes) >= 2 and isinstance(scopes[-2], str) and scopes[-2]:
        return scopes[-2]
    parts = [p for p in node.name.split("/") if p][:-1] if node.name.startswith("/") else []
    return ".".join(parts)


def _pool(graph, tensor: str, shape: list, conv: str | None, mask: str | None, mask_len,
          opset: int) -> tuple[str, str, int]:
    """Add nodes turning `tensor` into (batch, width) float32; returns (output tensor, pooling, width).
    conv: the pooling of a Conv input (a feature map), None for anything else."""
    x = tensor
    cast = unique_name(graph, f"{tensor}_f32")
    graph.node.append(helper.make_node("Cast", [x], [cast], to=TensorProto.FLOAT, name=f"{cast}_cast"))
    x = cast
    if len(shape) == 2:
        return x, "none", shape[1]
    pooled = unique_name(graph, f"{tensor}_pooled")
    if conv:
        return _pool_feature_map(graph, x, shape, conv, pooled, opset)
    if mask is not None and len(shape) == 3 and shape[1] == mask_len:
        m = unique_name(graph, f"{pooled}_mask")
        graph.node.append(helper.make_node("Cast", [mask], [m], to=TensorProto.FLOAT, name=f"{m}_cast"))
        axis = add_const(graph, unique_name(graph, f"{m}_axis"), np.asarray([-1], np.int64))
        graph.node.append(helper.make_node("Unsqueeze", [m, axis], [m + "3"], name=f"{m}_unsqueeze"))
        graph.node.append(helper.make_node("Mul", [x, m + "3"], [pooled + "_masked"], name=f"{pooled}_mul"))
        graph.node.append(sum_node(pooled + "_masked", [1], pooled + "_num", opset, graph))
        graph.node.append(sum_node(m + "3", [1], pooled + "_count", opset, graph))
        one = add_const(graph, unique_name(graph, f"{pooled}_one"), np.asarray(1.0, np.float32))
        graph.node.append(helper.make_node("Max", [pooled + "_count", one], [pooled + "_den"], name=f"{pooled}_max"))
        graph.node.append(helper.make_node("Div", [pooled + "_num", pooled + "_den"], [pooled], name=f"{pooled}_div"))
        return pooled, "masked_mean", shape[-1]
    graph.node.append(mean_node(x, list(range(1, len(shape) - 1)), pooled, opset, graph))
    return pooled, "mean", shape[-1]


def _pool_feature_map(graph, x: str, shape: list, pooling: str, pooled: str, opset: int) -> tuple[str, str, int]:
    """(N, C, L...) -> per-channel means (C), means then standard deviations (2 C), or the means of S
    contiguous segments of the first spatial axis, channel-major (C S): as edgelora_export.taps.pool."""
    axes, c = list(range(2, len(shape))), shape[1]
    segments = int(pooling.rsplit("_", 1)[1]) if pooling.startswith("segment_avg_") else 0
    if segments and not (isinstance(shape[2], int) and shape[2] >= segments):
        pooling, segments = "global_avg", 0          # unknown or too short an axis: the mean is all there is
    if pooling == "global_avg":
        graph.node.append(mean_node(x, axes, pooled, opset, graph))
        return pooled, pooling, c
    add = graph.node.append
    if pooling == "global_avg_std":
        add(mean_node(x, axes, pooled + "_m", opset, graph, keepdims=1))
        add(helper.make_node("Sub", [x, pooled + "_m"], [pooled + "_d"], name=f"{pooled}_sub"))
        add(helper.make_node("Mul", [pooled + "_d", pooled + "_d"], [pooled + "_d2"], name=f"{pooled}_sq"))
        add(mean_node(pooled + "_d2", axes, pooled + "_var", opset, graph))
        add(helper.make_node("Sqrt", [pooled + "_var"], [pooled + "_std"], name=f"{pooled}_sqrt"))
        add(mean_node(x, axes, pooled + "_mean", opset, graph))
        add(helper.make_node("Concat", [pooled + "_mean", pooled + "_std"], [pooled], axis=1, name=f"{pooled}_cat"))
        return pooled, pooling, 2 * c
    cuts = [i * shape[2] // segments for i in range(segments + 1)]
    parts = []
    for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        seg = f"{pooled}_seg{i}"
        starts, ends, axis = (add_const(graph, unique_name(graph, f"{seg}_{k}"), np.asarray([v], np.int64))
                              for k, v in (("start", a), ("end", b), ("axis", 2)))
        add(helper.make_node("Slice", [x, starts, ends, axis], [seg + "_x"], name=f"{seg}_slice"))
        add(mean_node(seg + "_x", axes, seg, opset, graph, keepdims=1))       # (N, C, 1, 1...)
        parts.append(seg)
    add(helper.make_node("Concat", parts, [pooled + "_cat"], axis=2, name=f"{pooled}_cat"))  # (N, C, S, 1...)
    add(helper.make_node("Flatten", [pooled + "_cat"], [pooled], axis=1, name=f"{pooled}_flatten"))
    return pooled, pooling, c * segments


def _dynamic_batch(graph: onnx.GraphProto, feeds: list) -> None:
    """Name dim 0 of inputs and outputs 'batch' (a fixed batch size is checked by _check_runs)."""
    for vi in list(feeds) + list(graph.output):
        dims = vi.type.tensor_type.shape.dim
        if len(dims) and not dims[0].HasField("dim_value"):
            dims[0].dim_param = dims[0].dim_param or "batch"


def _check_runs(blob: bytes, feeds: list, base: str) -> None:
    """The tapped model must run on a batch of 2 (dynamic batch) with finite outputs."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        feed = {}
        for vi in feeds:
            dims = [2] + [d if isinstance(d, int) and d > 0 else 1 for d in _dims(vi)[1:]]
            dtype = np.dtype(_dtype(vi))
            feed[vi.name] = rng.standard_normal(dims).astype(dtype) if dtype.kind == "f" else np.ones(dims, dtype)
        outs = session.run(None, feed)
    except Exception as e:
        raise ValueError(f"the tapped model does not run on a batch of 2 ({e}); the model needs a dynamic batch "
                         f"dimension (first dim of every input) and static feature sizes") from None
    if any(len(o) != 2 for o in outs):
        raise ValueError(f"the tapped model's outputs do not follow the batch (shapes {[o.shape for o in outs]}); "
                         f"`{base}` and every tap should be (batch, width)")
