"""Read a bundle's ONNX backbone as a core.chain.Chain: simple ops with the initializers as numpy weights.

Backprop through the backbone (deep adapters, device_bench's FT-*/LoRA-* baselines) needs more than
onnxruntime inference can do; the numpy engine (core/backprop.py) runs this chain instead. Supported: what
the exporter emits for the reference families (MLP, 1-D/2-D CNN, with or without batch-norm): a single path
from the input to the base output of Gemm/MatMul(+Add)/Conv/BatchNormalization (inference mode)/Relu/
MaxPool/ReduceMean/GlobalAveragePool/Transpose/Reshape/Flatten/(Un)Squeeze/Identity nodes; any other op is
named in a ValueError.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..core.chain import Chain, Op, WeightName
from ..files.bundle import load_manifest, model_path

SHAPE_OPS = ("Transpose", "Reshape", "Flatten", "Unsqueeze", "Squeeze")
SUPPORTED = ("Gemm", "MatMul", "Add", "Conv", "BatchNormalization", "Relu", "MaxPool", "ReduceMean",
             "GlobalAveragePool") + SHAPE_OPS + ("Identity",)


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def load_chain(bundle_dir: str | Path, manifest=None) -> Chain:
    """Parse the bundle's backbone into a Chain; ValueError naming the node when it is not supported.
    `manifest`: a re-calibrated one (runtime/backbone.Backbone.manifest): its batch-norm statistics and input
    standardisation replace the file's (the chain then computes what that re-calibrated backbone does)."""
    lab = load_manifest(bundle_dir)
    manifest = manifest or lab
    model = onnx.load(str(model_path(bundle_dir, lab)))
    g = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    for spec in manifest.normalization:
        consts[spec.mean_initializer] = np.asarray(spec.mean, np.float32)
        consts[spec.var_initializer] = np.asarray(spec.var, np.float32)
    for n in g.node:
        if n.op_type == "Constant":
            consts[n.output[0]] = numpy_helper.to_array(_attrs(n)["value"])
    if len(manifest.inputs) != 1:
        raise ValueError(f"{bundle_dir}: the numpy backward supports one input, found {len(manifest.inputs)}")
    readers = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    # the path to the base output: follow, from the input, the consumer that leads to it
    target = manifest.output.name
    producers = {o: n for n in g.node for o in n.output}
    path, value = [], target
    while value != manifest.inputs[0].name:
        if value not in producers:
            raise ValueError(f"{bundle_dir}: cannot trace the base output `{target}` back to the input")
        node = producers[value]
        path.append(node)
        data = [i for i in node.input if i and i not in consts]
        if len(data) != 1:
            raise ValueError(f"{bundle_dir}: node {node.name or node.op_type} ({node.op_type}) has {len(data)} "
                             f"data inputs; the numpy backward supports a single chain of ops")
        value = data[0]
    ops, weights, names = [], [], []
    for node in reversed(path):
        ops.extend(_convert(node, consts, weights, names, bundle_dir))
    pre = manifest.preprocess.get(manifest.inputs[0].name)
    mean = np.asarray(pre.mean, np.float32) if pre else None
    std = np.asarray(pre.std, np.float32) if pre else None
    return Chain(_fuse_bias(ops, weights), weights, mean, std, manifest, names)


def _gemm(node, a: dict, consts: dict, where):
    """(weight (d_in, d_out), bias, its name, "linear", no attrs) of a Gemm."""
    if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
        raise ValueError(f"{where}: Gemm {node.name} with transA/alpha/beta is not supported")
    w = consts[node.input[1]]
    w = w.T if a.get("transB", 0) else w
    b = consts[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros(w.shape[1], np.float32)
    return (np.ascontiguousarray(w, np.float32), b.astype(np.float32).reshape(-1),
            WeightName(node.input[1], bool(a.get("transB", 0))), "linear", None)


def _matmul(node, a: dict, consts: dict, where):
    """(weight, zero bias, its name, "linear", no attrs) of a MatMul by a 2-D constant."""
    w = consts[node.input[1]]
    if w.ndim != 2:
        raise ValueError(f"{where}: MatMul {node.name} with a {w.ndim}-D weight is not supported (2-D only)")
    return (np.ascontiguousarray(w, np.float32), np.zeros(w.shape[1], np.float32), WeightName(node.input[1]),
            "linear", None)


def _conv(node, a: dict, consts: dict, where):
    """(kernel, bias, its name, "conv", pads and strides) of a Conv (group 1, dilation 1, symmetric pads)."""
    w = consts[node.input[1]].astype(np.float32)
    k = w.ndim - 2
    if a.get("group", 1) != 1 or any(d != 1 for d in a.get("dilations", [1] * k)) \
            or a.get("auto_pad", b"NOTSET") != b"NOTSET":
        raise ValueError(f"{where}: Conv {node.name} needs group 1, dilation 1, explicit pads")
    pads = list(a.get("pads", [0] * 2 * k))
    if pads[:k] != pads[k:]:
        raise ValueError(f"{where}: Conv {node.name} has asymmetric pads {pads}")
    b = consts[node.input[2]] if len(node.input) > 2 else np.zeros(w.shape[0], np.float32)
    return (w, b.astype(np.float32), WeightName(node.input[1]), "conv",
            {"pads": tuple(pads[:k]), "strides": tuple(a.get("strides", [1] * k))})


WEIGHTED = {"Gemm": _gemm, "MatMul": _matmul, "Conv": _conv}   # the ops that hold a trainable weight


def _convert(node, consts: dict, weights: list, names: list, where) -> list[Op]:
    t, a = node.op_type, _attrs(node)
    if t == "Identity":
        return []
    if t == "Relu":
        return [Op("relu")]
    if t in WEIGHTED:
        w, b, name, kind, attrs = WEIGHTED[t](node, a, consts, where)
        weights.append((w, b))
        names.append(name)
        return [Op(kind, len(weights) - 1, attrs or {})]
    if t == "Add":  # a bias after a MatMul (fused by _fuse_bias)
        return [Op("bias", attrs={"b": consts[[i for i in node.input if i in consts][0]].astype(np.float32)})]
    if t == "BatchNormalization":  # inference mode: the stored statistics, y = x a + c per channel
        if a.get("training_mode", 0) or len(node.output) > 1 and any(node.output[1:]):
            raise ValueError(f"{where}: BatchNormalization {node.name} in training mode is not supported")
        gamma, beta, mu, var = (consts[i].astype(np.float64) for i in node.input[1:5])
        scale = gamma / np.sqrt(var + a.get("epsilon", 1e-5))
        return [Op("affine", attrs={"a": scale.astype(np.float32), "c": (beta - mu * scale).astype(np.float32)})]
    if t == "MaxPool":
        k = list(a["kernel_shape"])
        if list(a.get("strides", k)) != k or any(a.get("pads", [0])) or a.get("ceil_mode", 0):
            raise ValueError(f"{where}: MaxPool {node.name} needs stride == kernel, no pads, floor mode")
        return [Op("maxpool", attrs={"k": tuple(k)})]
    if t in ("ReduceMean", "GlobalAveragePool"):
        axes = a.get("axes") or (list(consts[node.input[1]]) if len(node.input) > 1 else None)
        keep = a.get("keepdims", 1) if t == "ReduceMean" else 1
        return [Op("mean", attrs={"axes": tuple(axes) if axes is not None else None, "keepdims": bool(keep)})]
    if t == "Transpose":
        return [Op("transpose", attrs={"perm": tuple(a["perm"])})]
    if t in SHAPE_OPS:
        return [Op("reshape", attrs={"node": t, "a": a, "arg": consts.get(node.input[1]) if len(node.input) > 1
                                     else None})]
    raise ValueError(f"{where}: op {t} (node {node.name}) is not supported by the numpy backward "
                     f"(core/backprop.py); supported: {', '.join(SUPPORTED)}")


def _fuse_bias(ops: list[Op], weights: list) -> list[Op]:
    out = []
    for op in ops:
        if op.kind == "bias":
            if not out or out[-1].kind != "linear":
                raise ValueError("an Add that is not a bias after a MatMul is not supported")
            w, b = weights[out[-1].layer]
            weights[out[-1].layer] = (w, b + op.attrs["b"].reshape(-1))
            continue
        out.append(op)
    return out
