"""`edgelora export` and `edgelora merge`: thin wrappers over edgelora.graphs.onnx_taps, edgelora_export.spec and edgelora.graphs.merge."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgelora import Backbone, Predictor, TrainConfig, finetune, load_adapter, load_manifest
from edgelora.cli import main


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def plain_mlp_onnx(path) -> None:
    """An ONNX model with no taps: x (N, 6) -> Gemm -> Relu -> Gemm -> logits (N, 3)."""
    rng = np.random.default_rng(0)
    w0, w1 = rng.standard_normal((6, 5)).astype(np.float32), rng.standard_normal((5, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w0", "b0"], ["h"]), helper.make_node("Relu", ["h"], ["a"]),
         helper.make_node("Gemm", ["a", "w1", "b1"], ["logits"])], "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(w0, "w0"), numpy_helper.from_array(np.zeros(5, np.float32), "b0"),
         numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(np.zeros(3, np.float32), "b1")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))


def test_export_onnx_needs_no_torch(tmp_path):
    plain_mlp_onnx(tmp_path / "m.onnx")
    code = ("import sys, json; from edgelora.cli import main; "
            f"rc = main(['export', {str(tmp_path / 'm.onnx')!r}, '--out', {str(tmp_path / 'b')!r}, '--json', "
            "'--classes', 'a,b,c']); print('torch' in sys.modules, rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result, torch_loaded = out.stdout.splitlines()
    assert torch_loaded == "False 0"
    r = json.loads(result)
    assert len(r["taps"]) == 2 and r["output"] == {"name": "logits", "width": 3}
    assert load_manifest(tmp_path / "b").classes == ("a", "b", "c")


def test_export_errors(tmp_path, capsys):
    plain_mlp_onnx(tmp_path / "m.onnx")
    for argv, words in [(["export", tmp_path / "none.onnx", "--out", tmp_path / "b"], "not found"),
                        (["export", tmp_path / "m.onnx", "--out", tmp_path / "b", "--example", "1,6"], "--example"),
                        (["export", tmp_path / "m.onnx", "--out", tmp_path / "b", "--taps", "nosuch"], "nosuch"),
                        (["export", "not a model", "--out", tmp_path / "b"], "MODEL")]:
        code, _, err = run(capsys, *argv)
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "b").exists()


def tiny_torch_mlp():
    """A factory for `edgelora export tests.test_cli_deploy:tiny_torch_mlp`."""
    import torch
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))


@pytest.mark.torch
def test_export_torch_factory(tmp_path, capsys):
    pytest.importorskip("torch")
    code, out, err = run(capsys, "export", "tests.test_cli_deploy:tiny_torch_mlp", "--example", "1,6", "--out",
                         tmp_path / "b", "--json")
    assert code == 0, err
    assert [t["width"] for t in json.loads(out)["taps"]] == [6, 5]
    assert Backbone(tmp_path / "b").run(np.zeros((2, 6), np.float32))[0].shape == (2, 3)


@pytest.fixture
def adapted(tmp_path, toy_bundle, toy_data):
    adapter, _ = finetune(Backbone(toy_bundle), *toy_data, TrainConfig(epochs=3, batch_size=10))
    adapter.save(tmp_path / "ad")
    return toy_bundle, tmp_path / "ad", toy_data[0]


def test_merge_formats(adapted, tmp_path, capsys):
    bundle, ad, x = adapted
    code, out, err = run(capsys, "merge", bundle, ad, "--out", tmp_path / "m.onnx", "--json")
    assert code == 0, err
    assert json.loads(out)["format"] == "merged"
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"x": x})[0]
    bb = Backbone(bundle)
    assert np.abs(got - Predictor(bb, load_adapter(ad)).outputs(x)).max() <= 1e-5
    code, out, _ = run(capsys, "merge", bundle, "--format", "lora_model", "--out", tmp_path / "l.onnx")
    assert code == 0 and "switchable" in out
    code, out, _ = run(capsys, "merge", bundle, ad, "--format", "onnx_adapter", "--out", tmp_path / "a.onnx_adapter")
    assert code == 0 and (tmp_path / "a.onnx_adapter").is_file()


def test_merge_errors(adapted, tmp_path, capsys):
    bundle, ad, _ = adapted
    for argv, words in [(["merge", bundle, tmp_path / "none", "--out", tmp_path / "m.onnx"], "none"),
                        (["merge", bundle, ad, "--out", tmp_path / "nodir" / "m.onnx"], "does not exist"),
                        (["merge", tmp_path / "nobundle", ad, "--out", tmp_path / "m.onnx"], "bundle not found"),
                        (["merge", bundle, "--out", tmp_path / "m.onnx"], "ADAPTER")]:
        code, _, err = run(capsys, *argv)
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "m.onnx").exists()
