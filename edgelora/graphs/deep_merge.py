"""A deep adapter merged into plain ONNX: each adapted weight initializer W becomes W + s (A B) in the
initializer's own layout and the tap outputs are dropped (merge.py bakes the input standardisation in front,
as for skip adapters). Any onnxruntime runs the result; so does edgelora's Predictor, which builds the same
graph in memory to serve a deep adapter."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..core.chain import WeightName, to_onnx_layout
from ..files.bundle import Manifest, model_path
from ..files.deep_adapter import DeepAdapter


def merged_weights(proto: onnx.ModelProto, adapter: DeepAdapter) -> dict[str, np.ndarray]:
    """ONNX initializer name -> W + s (A B), for every target of `adapter` (float32, the initializer's layout)."""
    inits = {i.name: i for i in proto.graph.initializer}
    transposed = {n.input[1] for n in proto.graph.node
                  if n.op_type == "Gemm" and any(a.name == "transB" and a.i for a in n.attribute)}
    out = {}
    for name, (a, b) in adapter.params.items():
        if name not in inits:
            raise ValueError(f"deep adapter: expected ONNX weight initializer `{name}` in the backbone, found "
                             f"none; the adapter belongs to another export of this model")
        w = numpy_helper.to_array(inits[name]).astype(np.float32)
        delta = (adapter.config.scale * (a.astype(np.float64) @ b.astype(np.float64))).astype(np.float32)
        if delta.size != w.size:
            raise ValueError(f"deep adapter: `{name}` has shape {w.shape} in the backbone, the adapter's update "
                             f"has {delta.size} values ({a.shape} x {b.shape})")
        out[name] = w + to_onnx_layout(delta, w, WeightName(name, name in transposed))
    return out


def set_normalization(g: onnx.GraphProto, manifest: Manifest) -> None:
    """The batch-norm statistics of the manifest (the lab's, or re-calibrated) into their initializers."""
    inits = {i.name: i for i in g.initializer}
    for spec in manifest.normalization:
        for name, values in ((spec.mean_initializer, spec.mean), (spec.var_initializer, spec.var)):
            if name not in inits:
                raise ValueError(f"the backbone has no initializer `{name}` (batch-norm layer `{spec.name}` in the "
                                 f"manifest); re-export the bundle")
            inits[name].CopyFrom(numpy_helper.from_array(np.asarray(values, np.float32), name))


def deep_model(bundle_dir, manifest: Manifest, adapter: DeepAdapter) -> onnx.ModelProto:
    """The backbone with the adapter folded into its weights and `manifest`'s batch-norm statistics (the lab's, or
    re-calibrated as the adapter was trained); one output, the base output (e.g. `logits`)."""
    proto = onnx.load(str(model_path(bundle_dir, manifest)))
    g = proto.graph
    set_normalization(g, manifest)
    for name, w in merged_weights(proto, adapter).items():
        i = next(k for k, t in enumerate(g.initializer) if t.name == name)
        g.initializer[i].CopyFrom(numpy_helper.from_array(w, name))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(manifest.output.name, TensorProto.FLOAT,
                                                  ["batch", manifest.num_outputs]))
    return proto
