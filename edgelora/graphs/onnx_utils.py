"""Small ONNX graph edits shared by export, onnx_taps and merge: conservative versions, names, pooling.

Devices often run an older onnxruntime than the workstation, so every file edgelora writes declares
opset 17 and IR version 8 (DESIGN.md "Dependencies"); `onnx.helper.make_model` would default to the
newest (IR 14, opset 28 with onnx 1.23). Measured: onnxruntime 1.15.0 and 1.17.0 load and run these files
(tests/test_export_onnx_compat.py).
"""
from __future__ import annotations

import warnings

import numpy as np
import onnx
from onnx import helper, numpy_helper, version_converter

OPSET = 17
IR_VERSION = 8
OLDEST_ORT = "1.15.0"  # oldest onnxruntime measured to load and run what edgelora writes (.onnx_adapter: 1.20)


def default_opset(model: onnx.ModelProto) -> int:
    """The version of the default ("" / ai.onnx) operator set a model imports."""
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            return op.version
    raise ValueError("the ONNX model imports no default (ai.onnx) operator set")


def conservative(model: onnx.ModelProto, opset: int = OPSET, ir_version: int = IR_VERSION,
                 strict: bool = True) -> onnx.ModelProto:
    """A copy declaring at most `opset` / `ir_version`, converted with onnx's version converter if needed.

    `strict`: raise ValueError when the model cannot be expressed in that opset; otherwise warn and keep
    its own (newer) opset.
    """
    model = _copy(model)
    have = default_opset(model)
    if have > opset:
        try:
            model = version_converter.convert_version(model, opset)
        except Exception as e:  # the converter raises RuntimeError/ValueError/C++ errors by op
            if strict:
                raise ValueError(f"cannot convert the ONNX model from opset {have} to opset {opset} ({e}); "
                                 f"it uses an operator that has no opset-{opset} form") from None
            warnings.warn(f"kept opset {have}: conversion to opset {opset} failed ({e}); runtimes older "
                          f"than what supports opset {have} will not load this model", stacklevel=2)
            return model
        _drop_unknown_attributes(model.graph, opset)
    used = {n.domain for n in model.graph.node} | {"", "ai.onnx"}
    used |= {f.domain for f in model.functions}
    keep = [op for op in model.opset_import if op.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    if not model.functions:
        model.ir_version = min(model.ir_version, ir_version) if model.ir_version else ir_version
        model.ir_version = max(model.ir_version, helper.find_min_ir_version_for(list(model.opset_import), True))
    return model


def _drop_unknown_attributes(graph: onnx.GraphProto, opset: int) -> None:
    """onnx's converter leaves attributes the older operator does not know (ReduceMean 18 -> 17 keeps
    `noop_with_empty_axes`); drop them, they are no-ops by construction of the conversion."""
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        try:
            known = onnx.defs.get_schema(node.op_type, opset).attributes
        except onnx.defs.SchemaError:
            continue
        keep = [a for a in node.attribute if a.name in known]
        if len(keep) != len(node.attribute):
            del node.attribute[:]
            node.attribute.extend(keep)
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                _drop_unknown_attributes(a.g, opset)


def serialize(model: onnx.ModelProto) -> bytes:
    """Check the model (full shape inference) and return its bytes (a single file, no external data)."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ValueError(f"the edited ONNX model is invalid: {e}") from None
    return model.SerializeToString()


def load(source) -> onnx.ModelProto:
    """An ONNX model from a path, bytes or a ModelProto (copied, never changed in place)."""
    if isinstance(source, onnx.ModelProto):
        return _copy(source)
    if isinstance(source, (bytes, bytearray)):
        try:
            return onnx.load_from_string(bytes(source))
        except Exception as e:  # protobuf's DecodeError and friends
            raise ValueError(f"the bytes given are not an ONNX model ({e})") from None
    try:
        return onnx.load(str(source))
    except FileNotFoundError:
        raise FileNotFoundError(f"ONNX model not found: {source}") from None
    except Exception as e:
        raise ValueError(f"{source} is not a readable ONNX model ({e})") from None


def rename_value(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename a tensor everywhere it appears in `graph` (nodes, inputs, outputs, value_info)."""
    for node in graph.node:
        node.input[:] = [new if i == old else i for i in node.input]
        node.output[:] = [new if o == old else o for o in node.output]
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        if vi.name == old:
            vi.name = new
    for init in graph.initializer:
        if init.name == old:
            init.name = new


def set_outputs(graph: onnx.GraphProto, sources: list[str], names: list[str],
                shapes: dict[str, list] | None = None) -> None:
    """Make the graph's outputs exactly `names`, output i carrying tensor `sources[i]`.

    `shapes` gives float32 output shapes for tensors the graph has no type for (new nodes).
    Each output gets its own Identity node, so two outputs of the same tensor, or an output that is
    a graph input, never clash (torch's exporter renames such values: see export/torch_export.py).
    """
    infos = {vi.name: vi for vi in list(graph.output) + list(graph.value_info) + list(graph.input)}
    for src, name in zip(sources, names):
        if src != name:
            graph.node.append(helper.make_node("Identity", [src], [name], name=f"edgelora_out_{name}"))
    new = []
    for src, name in zip(sources, names):
        vi = onnx.ValueInfoProto()
        if shapes and name in shapes:
            vi = helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shapes[name])
        elif src in infos:
            vi.CopyFrom(infos[src])
        vi.name = name
        new.append(vi)
    del graph.output[:]
    graph.output.extend(new)


def mean_node(x: str, axes: list[int], out: str, opset: int, graph: onnx.GraphProto,
              keepdims: int = 0) -> onnx.NodeProto:
    """ReduceMean over `axes`: axes are an attribute up to opset 17 and an input from opset 18."""
    if opset < 18:
        return helper.make_node("ReduceMean", [x], [out], axes=axes, keepdims=keepdims, name=f"{out}_mean")
    ax = add_const(graph, f"{out}_axes", np.asarray(axes, np.int64))
    return helper.make_node("ReduceMean", [x, ax], [out], keepdims=keepdims, name=f"{out}_mean")


def sum_node(x: str, axes: list[int], out: str, opset: int, graph: onnx.GraphProto,
             keepdims: int = 0) -> onnx.NodeProto:
    """ReduceSum over `axes` (axes became an input in opset 13)."""
    ax = add_const(graph, f"{out}_axes", np.asarray(axes, np.int64))
    return helper.make_node("ReduceSum", [x, ax], [out], keepdims=keepdims, name=f"{out}_sum")


def add_const(graph: onnx.GraphProto, name: str, value: np.ndarray) -> str:
    """Add an initializer and return its name."""
    graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    return name


def unique_name(graph: onnx.GraphProto, base: str) -> str:
    """`base`, or `base_1`, `base_2`... so as not to clash with any tensor already in the graph."""
    taken = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    taken |= {o for n in graph.node for o in n.output}
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    return name


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out
