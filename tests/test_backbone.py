"""Bundle manifest and backbone: outputs, validation, and errors for bad bundles and bad input."""
import json

import numpy as np
import onnxruntime as ort
import pytest

from edgelora import Backbone, load_manifest
from edgelora.files.bundle import MANIFEST_FILE
from tests.helpers import BackboneCounter


def test_run_returns_base_output_and_taps_in_manifest_order(toy_bundle, toy_data):
    bb = Backbone(toy_bundle)
    ran = BackboneCounter(bb)
    x = toy_data[0][:5]
    y0, taps = bb.run(x)
    assert y0.shape == (5, 3) and [t.shape for t in taps] == [(5, 10), (5, 8), (5, 8)]
    assert all(a.dtype == np.float32 for a in [y0, *taps])
    np.testing.assert_allclose(taps[0], (x - 0.5) / 2.0, rtol=1e-6)  # preprocessing from the manifest
    sess = ort.InferenceSession(str(toy_bundle / "backbone.onnx"))
    ref = sess.run(None, {"x": ((x - 0.5) / 2.0).astype(np.float32)})
    np.testing.assert_allclose(y0, ref[0], rtol=1e-6)
    assert ran.samples == 5
    m = load_manifest(toy_bundle)
    assert m.tap_names == ("fc0.input", "fc1.input", "fc2.input") and m.tap_widths == (10, 8, 8)


def test_batches_are_chunked(toy_bundle, toy_data):
    x = toy_data[0]
    a = Backbone(toy_bundle, batch_size=7).features(x)
    b = Backbone(toy_bundle, batch_size=1000).features(x)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-6)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-6)


def test_rows_are_base_output_and_taps_written_into_one_buffer(toy_bundle, toy_data):
    bb = Backbone(toy_bundle, batch_size=7)
    x = toy_data[0][:20]
    y0, taps = bb.run(x)
    rows = bb.rows(x)
    np.testing.assert_array_equal(rows, np.hstack([y0, *taps]))      # the plain row: no extra columns
    wider = np.full((20, rows.shape[1] + 2), 5.0, np.float32)
    assert bb.rows(x, out=wider[:, 1:-1]).base is wider                # written in place, e.g. inside a wider row
    np.testing.assert_array_equal(wider[:, 1:-1], rows)
    assert (wider[:, [0, -1]] == 5.0).all()
    with pytest.raises(ValueError, match=r"`out` should be a float32 array of shape \(20, 29\), found float32 "
                                         r"\(20, 30\)"):
        bb.rows(x, out=wider[:, 1:])


def test_float64_and_int_inputs_are_cast(toy_bundle, toy_data):
    bb = Backbone(toy_bundle)
    x = toy_data[0][:4]
    np.testing.assert_allclose(bb.features(x.astype(np.float64))[0], bb.features(x)[0], rtol=1e-6)
    assert bb.features(np.ones((2, 10), np.int64))[0].shape == (2, 3)


def test_error_wrong_width(toy_bundle):
    with pytest.raises(ValueError, match=r"expected shape \(N, 10\).*found \(4, 9\)"):
        Backbone(toy_bundle).run(np.zeros((4, 9), np.float32))


def test_error_wrong_dtype(toy_bundle):
    with pytest.raises(TypeError, match="found dtype <U1"):
        Backbone(toy_bundle).run(np.full((4, 10), "a"))
    with pytest.raises(TypeError, match="complex"):
        Backbone(toy_bundle).run(np.zeros((4, 10), np.complex64))


def test_error_nan_and_inf(toy_bundle):
    x = np.zeros((4, 10), np.float32)
    x[2, 3] = np.nan
    with pytest.raises(ValueError, match="1 sample.*NaN or Inf.*row 2"):
        Backbone(toy_bundle).run(x)
    x[2, 3] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        Backbone(toy_bundle).run(x)


def test_error_empty(toy_bundle):
    with pytest.raises(ValueError, match="no samples"):
        Backbone(toy_bundle).run(np.zeros((0, 10), np.float32))


def edit_manifest(folder, change):
    path = folder / MANIFEST_FILE
    data = json.loads(path.read_text())
    change(data)
    data.pop("checksum", None)  # a hand edit: without its checksum the manifest is taken as written
    path.write_text(json.dumps(data))


def test_error_manifest_edited_or_corrupt(toy_bundle):
    path = toy_bundle / MANIFEST_FILE
    data = json.loads(path.read_text())
    data["classes"][0] = "A"  # still valid JSON and a valid manifest: only the checksum tells
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="manifest is corrupt or was edited.*re-export the bundle"):
        Backbone(toy_bundle)
    data.pop("checksum")
    path.write_text(json.dumps(data))
    assert Backbone(toy_bundle).manifest.classes[0] == "A"


def test_error_manifest_missing_field(toy_bundle):
    edit_manifest(toy_bundle, lambda d: d.pop("taps"))
    with pytest.raises(ValueError, match="missing field `taps`"):
        Backbone(toy_bundle)


def test_error_manifest_newer_version(toy_bundle):
    edit_manifest(toy_bundle, lambda d: d.update(format_version=99))
    with pytest.raises(ValueError, match="format_version 99 is newer.*upgrade edgelora"):
        Backbone(toy_bundle)


def test_error_manifest_wrong_type_and_extra_field(toy_bundle):
    edit_manifest(toy_bundle, lambda d: d["output"].update(width="3"))
    with pytest.raises(ValueError, match=r"field `output`: field `width`: expected an integer, found string"):
        Backbone(toy_bundle)
    edit_manifest(toy_bundle, lambda d: (d["output"].update(width=3), d.update(colour="red")))
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['colour'\]"):
        Backbone(toy_bundle)


def test_error_manifest_not_json(toy_bundle):
    (toy_bundle / MANIFEST_FILE).write_text('{"format_version": 1, "taps": [')
    with pytest.raises(ValueError, match="not valid JSON.*corrupt or truncated"):
        Backbone(toy_bundle)


def test_error_onnx_file_truncated_or_replaced(toy_bundle):
    path = toy_bundle / "backbone.onnx"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="does not match the manifest.*corrupt, truncated"):
        Backbone(toy_bundle)


def test_error_missing_files(toy_bundle, tmp_path):
    with pytest.raises(FileNotFoundError, match="bundle not found"):
        Backbone(tmp_path / "nope")
    (toy_bundle / "backbone.onnx").unlink()
    with pytest.raises(FileNotFoundError, match="ONNX backbone missing"):
        Backbone(toy_bundle)


def test_error_model_file_outside_bundle(toy_bundle):
    edit_manifest(toy_bundle, lambda d: d.update(model_file="../backbone.onnx"))
    with pytest.raises(ValueError, match="plain file name"):
        Backbone(toy_bundle)


def test_error_manifest_output_not_in_graph(toy_bundle):
    edit_manifest(toy_bundle, lambda d: d["taps"][0].update(output="nope"))
    with pytest.raises(ValueError, match="`nope` is not an output of the ONNX graph"):
        Backbone(toy_bundle)


def test_error_bad_threads(toy_bundle):
    with pytest.raises(ValueError, match="`threads` should be a positive integer"):
        Backbone(toy_bundle, threads=0)


def test_error_backbone_failure_is_a_value_error(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    from edgelora.files.bundle import BUNDLE_FORMAT_VERSION, InputSpec, Manifest, OutputSpec, TapSpec, write_bundle
    emb = numpy_helper.from_array(np.ones((10, 4), np.float32), "emb")
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["e"]), helper.make_node("ReduceMean", ["e"], ["h"], axes=[1],
                                                                                 keepdims=0),
             helper.make_node("Identity", ["h"], ["logits"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 3])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4]),
                               helper.make_tensor_value_info("h", TensorProto.FLOAT, ["N", 4])], [emb])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    write_bundle(tmp_path / "b", model.SerializeToString(), Manifest(
        BUNDLE_FORMAT_VERSION, "sha256:" + "0" * 64, (InputSpec("ids", ("N", 3), "int64"),), OutputSpec("logits", 4),
        (TapSpec("h", "h", 4),), "classification", tuple("abcd")))
    bb = Backbone(tmp_path / "b")
    assert bb.run(np.array([[1, 2, 3]]))[0].shape == (1, 4)
    with pytest.raises(ValueError, match="the backbone failed on samples 0..0.*token ids"):
        bb.run(np.array([[1, 2, 50]]))                  # token id outside the 10-word vocabulary
