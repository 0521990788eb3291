"""edgelora.graphs.onnx_taps: an existing ONNX model -> bundle with pooled taps, without torch."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgelora import Backbone
from edgelora.files.bundle import FEATURE_MAP_POOLINGS, load_manifest
from edgelora.graphs.onnx_taps import add_taps

RNG = np.random.default_rng(0)


def _model(nodes, inputs, outputs, inits, opset=17, ir=8):
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir)


def _mlp(opset=17, ir=8, batch="N"):
    """x (N, 6) -> Gemm -> Relu -> MatMul + Add -> y (N, 3): no tap outputs, like any exported model."""
    w = {"w1": RNG.standard_normal((6, 8)), "b1": RNG.standard_normal(8), "w2": RNG.standard_normal((8, 3)),
         "b2": RNG.standard_normal(3)}
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="/fc1/Gemm"),
             helper.make_node("Relu", ["h"], ["a"]),
             helper.make_node("MatMul", ["a", "w2"], ["z"], name="/fc2/MatMul"),
             helper.make_node("Add", ["z", "b2"], ["y"])]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 6])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])], w, opset, ir), w


def test_mlp_auto_taps_match_numpy(tmp_path):
    model, w = _mlp()
    m = add_taps(model, tmp_path / "b")
    assert [t.name for t in m.taps] == ["fc1.input", "fc2.input"]
    assert m.tap_widths == (6, 8) and m.output.name == "y" and m.output.width == 3
    assert all(t.pooling == "none" for t in m.taps)
    x = RNG.standard_normal((5, 6)).astype(np.float32)
    y0, (t1, t2) = Backbone(tmp_path / "b").run(x)
    a = np.maximum(x @ w["w1"] + w["b1"], 0)
    np.testing.assert_allclose(t1, x, rtol=0, atol=0)
    np.testing.assert_allclose(t2, a, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y0, a @ w["w2"] + w["b2"], rtol=1e-5, atol=1e-5)


def test_conv_and_sequence_taps_are_pooled(tmp_path):
    """Conv input (N, C, L) -> global average; token sequence (N, L, d) -> masked mean over real tokens."""
    w = {"cw": RNG.standard_normal((4, 2, 3)), "pw": RNG.standard_normal((4, 3))}
    nodes = [helper.make_node("Conv", ["x", "cw"], ["c"], pads=[1, 1], name="/conv/Conv"),
             helper.make_node("Transpose", ["c"], ["s"], perm=[0, 2, 1]),            # (N, L, 4) tokens
             helper.make_node("MatMul", ["s", "pw"], ["p"], name="/proj/MatMul"),    # (N, L, 3)
             helper.make_node("ReduceMean", ["p"], ["y"], axes=[1], keepdims=0)]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 7]),
                           helper.make_tensor_value_info("mask", TensorProto.INT64, ["N", 7])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], w)
    m = add_taps(model, tmp_path / "b", attention_mask="mask", task="regression")
    assert [(t.name, t.width, t.pooling) for t in m.taps] == [("conv.input", 2, "global_avg"),
                                                               ("proj.input", 4, "masked_mean")]
    x = RNG.standard_normal((3, 2, 7)).astype(np.float32)
    mask = np.ones((3, 7), np.int64)
    mask[1, 4:] = 0
    mask[2, 1:] = 0
    _, (t1, t2) = Backbone(tmp_path / "b").run({"x": x, "mask": mask})
    np.testing.assert_allclose(t1, x.mean(axis=2), atol=1e-6)
    c = np.stack([sum(np.pad(x[n], ((0, 0), (1, 1)))[:, j:j + 7].T @ w["cw"][:, :, j].T for j in range(3))
                  for n in range(3)])                                                    # (N, L, 4)
    want = (c * mask[:, :, None]).sum(1) / mask.sum(1, keepdims=True)
    np.testing.assert_allclose(t2, want, rtol=1e-4, atol=1e-5)


def test_opset_and_ir_are_made_conservative(tmp_path):
    """A model written with opset 18 / IR 9 (and one with opset 13) comes out as opset 17 / IR 8."""
    for opset, ir in ((18, 9), (13, 7)):
        model, _ = _mlp(opset, ir)
        m = add_taps(model, tmp_path / f"b{opset}")
        proto = onnx.load(str(tmp_path / f"b{opset}" / m.model_file))
        assert proto.opset_import[0].version == 17 and proto.ir_version == 8
        assert Backbone(tmp_path / f"b{opset}").run(np.zeros((2, 6), np.float32))[0].shape == (2, 3)


def test_explicit_tensor_taps_and_bytes_input(tmp_path):
    model, _ = _mlp()
    m = add_taps(model.SerializeToString(), tmp_path / "b", taps=["a"])
    assert [(t.name, t.output, t.width, t.source) for t in m.taps] == [("fc2.input", "tap.fc2.input", 8, "a")]
    assert load_manifest(tmp_path / "b") == m


def test_error_unknown_tap_lists_candidates(tmp_path):
    model, _ = _mlp()
    with pytest.raises(ValueError, match=r"unknown tap\(s\) \['nope'\].*\['x', 'a'\]"):
        add_taps(model, tmp_path / "b", taps=["nope"])
    assert not (tmp_path / "b").exists()


def test_error_several_outputs_need_a_choice(tmp_path):
    model, _ = _mlp()
    model.graph.output.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, ["N", 8]))
    with pytest.raises(ValueError, match="choose it with output="):
        add_taps(model, tmp_path / "b")
    m = add_taps(model, tmp_path / "b", output="y")
    assert m.output.name == "y"


def test_error_fixed_batch_size(tmp_path):
    model, _ = _mlp(batch=1)
    model.graph.node.insert(0, helper.make_node("Reshape", ["x", "shape"], ["x1"]))
    model.graph.node[1].input[0] = "x1"
    model.graph.initializer.append(numpy_helper.from_array(np.asarray([1, 6], np.int64), "shape"))
    with pytest.raises(ValueError, match="dynamic batch"):
        add_taps(model, tmp_path / "b", taps=["a"])
    assert not (tmp_path / "b").exists()


def test_error_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="ONNX model not found"):
        add_taps(tmp_path / "missing.onnx", tmp_path / "b")


def test_device_side_modules_do_not_import_torch():
    code = "import sys, edgelora.graphs.onnx_taps, edgelora.graphs.merge, edgelora.graphs.onnx_utils; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("pooling", FEATURE_MAP_POOLINGS)
def test_conv_feature_map_poolings_match_numpy(tmp_path, pooling):
    """Each feature-map pooling of a Conv input (here the graph input x, (N, 2, 7)) equals numpy's."""
    w = {"cw": RNG.standard_normal((4, 2, 3)), "hw": RNG.standard_normal((4, 3))}
    nodes = [helper.make_node("Conv", ["x", "cw"], ["c"], pads=[1, 1], name="/conv/Conv"),
             helper.make_node("ReduceMean", ["c"], ["m"], axes=[2], keepdims=0),
             helper.make_node("MatMul", ["m", "hw"], ["y"], name="/head/MatMul")]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 7])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], w)
    m = add_taps(model, tmp_path / "b", taps=["x"], pooling=pooling)
    x = RNG.standard_normal((5, 2, 7)).astype(np.float32)
    _, (t,) = Backbone(tmp_path / "b").run({"x": x})
    assert m.taps[0].pooling == ("global_avg" if pooling == "segment_avg_8" else pooling)  # 7 < 8 positions
    pooling = m.taps[0].pooling
    if pooling == "global_avg":
        want = x.mean(axis=2)
    elif pooling == "global_avg_std":
        want = np.concatenate([x.mean(axis=2), x.std(axis=2)], axis=1)
    else:
        s = int(pooling.rsplit("_", 1)[1])
        cuts = [i * 7 // s for i in range(s + 1)]
        want = np.stack([x[:, :, a:b].mean(axis=2) for a, b in zip(cuts[:-1], cuts[1:])], axis=2).reshape(5, -1)
    assert m.taps[0].width == want.shape[1]
    np.testing.assert_allclose(t, want, rtol=1e-5, atol=1e-6)


def test_error_unknown_pooling_onnx(tmp_path):
    with pytest.raises(ValueError, match="`pooling` should be one of"):
        add_taps(_mlp(), tmp_path / "b", pooling="max")
