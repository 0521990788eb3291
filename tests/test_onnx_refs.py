"""External-data references read from ONNX bytes, against the onnx package's own view of the model."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgelora.files.onnx_refs import external_locations
from tests.helpers import mlp_onnx, random_mlp


def external_model(tmp_path, location="weights.bin"):
    """An MLP whose weights live in `location` (relative to the model's folder), as onnx.save writes it."""
    blob, _ = mlp_onnx(random_mlp([4, 3, 2]))
    model = onnx.load_from_string(blob)
    onnx.save_model(model, str(tmp_path / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)
    return (tmp_path / "m.onnx").read_bytes(), (tmp_path / location).read_bytes()


def test_a_self_contained_model_names_no_files():
    assert external_locations(mlp_onnx(random_mlp([4, 3, 2]))[0]) == []


def test_locations_match_the_onnx_package(tmp_path):
    blob, _ = external_model(tmp_path)
    model = onnx.load_from_string(blob)
    expected = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    assert external_locations(blob) == sorted(expected) == ["weights.bin"]


def test_tensors_inside_subgraphs_and_constants_are_found():
    """A Constant node inside an If branch keeping its value in another file."""
    t = numpy_helper.from_array(np.ones(3, np.float32), "c")
    t.data_location = TensorProto.EXTERNAL
    onnx.external_data_helper.set_external_data(t, location="../../etc/passwd", offset=0, length=12)
    t.ClearField("raw_data")
    branch = helper.make_graph([helper.make_node("Constant", [], ["y"], value=t)], "then", [],
                               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])])
    node = helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])])
    blob = helper.make_model(graph).SerializeToString()
    assert external_locations(blob) == ["../../etc/passwd"]


@pytest.mark.parametrize("blob", [b"\x3a\xff\xff\xff\xff\x0f", b"\x3a\x05ab", b"\x0f", b"\xff" * 11])
def test_error_malformed_bytes_raise_value_error(blob):
    with pytest.raises(ValueError):
        external_locations(blob)
