"""edgelora.graphs.merge: adapters deployed as plain ONNX (merged, or onnxruntime-native LoRA adapters)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgelora import Backbone, Predictor, TrainConfig, finetune
from edgelora.graphs.merge import adapter_inputs, export_ort_adapter, lora_model, merge
from edgelora.graphs.onnx_utils import IR_VERSION, OPSET
from tests.helpers import mlp_bundle, random_mlp

RNG = np.random.default_rng(0)


def _session(path):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A bundle with standardisation constants and two adapters of different ranks and labels."""
    folder = tmp_path_factory.mktemp("merge")
    mean = RNG.standard_normal(10).astype(np.float32)
    std = (RNG.random(10) + 0.5).astype(np.float32)
    mlp_bundle(folder / "bundle", random_mlp([10, 16, 12, 4]), mean=mean, std=std)
    backbone = Backbone(folder / "bundle")
    x = (RNG.standard_normal((160, 10)) * 2 + 1).astype(np.float32)
    y = RNG.integers(0, 4, 160)
    a1, _ = finetune(backbone, x, y, TrainConfig(epochs=4, r=4, seed=0, form="skip"))
    a2, _ = finetune(backbone, x, (y + 1) % 4, TrainConfig(epochs=4, r=2, seed=1, bias=False, form="skip"))
    a1.save(folder / "a1")
    return folder, backbone, x, a1, a2


def test_merged_model_equals_predictor(trained, tmp_path):
    folder, backbone, x, a1, _ = trained
    out = merge(folder / "bundle", folder / "a1", tmp_path / "model.onnx")
    s = _session(out)
    assert [o.name for o in s.get_outputs()] == ["logits"] and [i.name for i in s.get_inputs()] == ["x"]
    got = s.run(None, {"x": x})[0]           # raw inputs: the standardisation is baked into the graph
    want = Predictor(backbone, a1).outputs(x)
    assert np.abs(got - want).max() <= 1e-5
    assert np.abs(got - Predictor(backbone).outputs(x)).max() > 1e-3   # the adapter does change the outputs
    proto = onnx.load(str(out))
    assert proto.opset_import[0].version <= OPSET and proto.ir_version <= IR_VERSION
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["edgelora.backbone_fingerprint"] == backbone.identity
    assert "baked" in meta["edgelora.preprocess"]


def test_merge_without_baked_preprocess_needs_standardised_inputs(trained, tmp_path):
    folder, backbone, x, a1, _ = trained
    out = merge(folder / "bundle", a1, tmp_path / "raw.onnx", bake_preprocess=False)
    pre = backbone.manifest.preprocess["x"]
    z = ((x - np.float32(pre.mean)) / np.float32(pre.std)).astype(np.float32)
    assert np.abs(_session(out).run(None, {"x": z})[0] - Predictor(backbone, a1).outputs(x)).max() <= 1e-5
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert "NOT baked" in meta["edgelora.preprocess"]


def test_error_adapter_of_another_backbone_leaves_no_file(trained, tmp_path):
    folder, _, x, a1, _ = trained
    mlp_bundle(tmp_path / "other", random_mlp([10, 16, 12, 4], seed=5))
    out = tmp_path / "sub" / "model.onnx"
    with pytest.raises(ValueError, match="belongs to another backbone"):
        merge(tmp_path / "other", folder / "a1", out)
    assert not out.exists() and not out.parent.exists()
    with pytest.raises(ValueError, match="belongs to another backbone"):
        export_ort_adapter(tmp_path / "other", a1, tmp_path / "a.onnx_adapter")
    assert list(tmp_path.glob("*.onnx_adapter")) == []


def test_error_output_path_is_a_folder(trained, tmp_path):
    folder, *_ = trained
    with pytest.raises(ValueError, match="is a folder"):
        merge(folder / "bundle", folder / "a1", tmp_path)


def test_lora_model_switches_onnxruntime_adapters_per_run(trained, tmp_path):
    """One model, adapters in onnxruntime's format activated per run: each gives its own outputs."""
    folder, backbone, x, a1, a2 = trained
    model = lora_model(folder / "bundle", tmp_path / "lora.onnx")
    s = _session(model)
    assert np.abs(s.run(None, {"x": x})[0] - Predictor(backbone).outputs(x)).max() <= 1e-5   # no adapter: base
    for i, adapter in enumerate((a1, a2, a1)):
        path = export_ort_adapter(folder / "bundle", adapter, tmp_path / f"a{i}.onnx_adapter")
        lora = ort.LoraAdapter()
        lora.Load(str(path))
        options = ort.RunOptions()
        options.add_active_adapter(lora)
        want = Predictor(backbone, adapter).outputs(x)
        assert np.abs(s.run(None, {"x": x}, options)[0] - want).max() <= 1e-5
    # the same weights as plain overridable inputs (for runtimes without LoRA adapter support)
    feeds = adapter_inputs(folder / "bundle", a2)
    assert set(feeds) == {"lora.A.fc0.input", "lora.A.fc1.input", "lora.A.fc2.input", "lora.B", "lora.scale",
                          "lora.bias"}
    assert np.abs(s.run(None, {"x": x, **feeds})[0] - Predictor(backbone, a2).outputs(x)).max() <= 1e-5


def test_ort_adapter_file_round_trips(trained, tmp_path):
    folder, _, _, a1, _ = trained
    path = export_ort_adapter(folder / "bundle", a1, tmp_path / "a.onnx_adapter")
    params = ort.AdapterFormat.read_adapter(str(path)).get_parameters()
    want = adapter_inputs(folder / "bundle", a1)
    assert set(params) == set(want)
    for k, v in want.items():
        np.testing.assert_array_equal(params[k].numpy(), v)


def test_error_bundle_whose_standardised_input_is_also_an_output(tmp_path):
    """Not a bundle export writes; refused with what was expected and found (it was an assert)."""
    from onnx import TensorProto, helper

    from edgelora import load_manifest
    from edgelora.files.bundle import write_bundle
    mlp_bundle(tmp_path / "ok", random_mlp([4, 3]), mean=np.zeros(4), std=np.ones(4))
    manifest = load_manifest(tmp_path / "ok")
    proto = onnx.load(str(tmp_path / "ok" / manifest.model_file))
    proto.graph.output.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]))
    write_bundle(tmp_path / "bad", proto.SerializeToString(), manifest)
    with pytest.raises(ValueError, match=r"bad: expected the standardised inputs \['x'\] to be graph inputs only, "
                                         r"found \['x'\] among the graph outputs too"):
        lora_model(tmp_path / "bad", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
    lora_model(tmp_path / "bad", tmp_path / "raw.onnx", bake_preprocess=False)   # nothing to standardise: fine
