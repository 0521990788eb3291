"""runtime/recalibrate: batch-norm and input statistics re-estimated on device samples, as candidates of a
fine-tune, carried by the adapter into prediction, serving and merged ONNX models."""
from __future__ import annotations

import copy
import dataclasses
import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from edgelora import Backbone, Predictor, TrainConfig, finetune  # noqa: E402
from edgelora.files.adapter import load_adapter  # noqa: E402
from edgelora.files.data import as_inputs  # noqa: E402
from edgelora.files.recalibration import LayerStats, Recalibration  # noqa: E402
from edgelora.graphs.merge import export_ort_adapter, merge  # noqa: E402
from edgelora.ops.serve import AdapterServer, ServeConfig  # noqa: E402
from edgelora.ops.store import AdapterStore  # noqa: E402
from edgelora.runtime import recalibrate  # noqa: E402
from edgelora_export import export_model  # noqa: E402

MEAN, STD = [[0.5], [0.0], [-1.0]], 2.0          # the lab's per-channel standardisation of the 3 x 40 input


def _net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(3, 8, 5), nn.BatchNorm1d(8), nn.ReLU(), nn.Conv1d(8, 8, 3), nn.BatchNorm1d(8),
                        nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, 16), nn.BatchNorm1d(16),
                        nn.ReLU(), nn.Linear(16, 3))
    net.train()
    with torch.no_grad():
        for _ in range(5):                       # lab running statistics that are not the defaults
            net(torch.randn(32, 3, 40))
    return net.eval()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """(bundle folder, torch model, shifted device samples x, labels y)."""
    folder = tmp_path_factory.mktemp("recal") / "bundle"
    net = _net()
    export_model(net, torch.randn(4, 3, 40), folder, preprocess={"input": {"mean": MEAN, "std": STD}})
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    x = (rng.normal(size=(60, 3, 40)) * 1.7 + 0.8).astype(np.float32)   # another gain and offset
    x[np.arange(60), y, :] += 2.0
    return folder, net, x, y


def _torch_outputs(net, x, pre, train_mode: bool):
    """The torch model on standardised x; train mode: batch-norm normalises with the batch's statistics."""
    xs = (x - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    model = copy.deepcopy(net).train(train_mode)
    with torch.no_grad():
        return model(torch.from_numpy(xs.astype(np.float32))).numpy()


def test_export_keeps_batch_norm_addressable(lab):
    folder, net, x, _ = lab
    bb = Backbone(folder)
    norms = bb.manifest.normalization
    assert [n.name for n in norms] == ["1", "4", "9"] and [n.channels for n in norms] == [8, 8, 16]
    graph = onnx.load(str(folder / "backbone.onnx")).graph
    bn_inputs = [n.input[3:5] for n in graph.node if n.op_type == "BatchNormalization"]
    assert bn_inputs == [[n.mean_initializer, n.var_initializer] for n in norms]     # not folded into Conv/Gemm
    assert not any(o.name.startswith("bn.") for o in graph.output)  # served: no moments (onnxruntime fuses BN)
    assert bb.manifest.recalibration_model["file"] == "recalibrate.onnx"
    full = onnx.load(str(folder / "recalibrate.onnx")).graph
    assert [o.name for o in full.output][-3:] == [n.moments for n in norms]
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    for spec in norms:
        module = net.get_submodule(spec.name)
        np.testing.assert_array_equal(inits[spec.mean_initializer], module.running_mean.numpy())
        np.testing.assert_array_equal(np.asarray(spec.var, np.float32), module.running_var.numpy())
    np.testing.assert_allclose(bb.run(x)[0], _torch_outputs(net, x, bb.manifest.preprocess["input"], False), atol=1e-5)


@pytest.mark.parametrize("kind", ["input", "bn", "both"])
def test_reestimated_statistics_equal_a_torch_train_mode_forward(lab, kind):
    folder, net, x, _ = lab
    bb = Backbone(folder)
    rc = recalibrate.estimate(bb, as_inputs(x, bb.manifest), kind)
    re = bb.recalibrated(rc)
    assert re.identity != bb.identity and re.recalibration == rc
    pre = re.manifest.preprocess["input"]
    if kind != "bn":      # per channel, as the lab's: the samples' channel means and standard deviations
        np.testing.assert_allclose(np.asarray(pre.mean)[:, 0], x.astype(np.float64).mean(axis=(0, 2)), rtol=1e-9)
        np.testing.assert_allclose(np.asarray(pre.std)[:, 0], x.astype(np.float64).std(axis=(0, 2)), rtol=1e-9)
    else:
        assert pre == bb.manifest.preprocess["input"]
    want = _torch_outputs(net, x, pre, train_mode=kind != "input")
    np.testing.assert_allclose(re.run(x)[0], want, atol=2e-5)
    if kind != "input":   # the first layer's variance: numpy's biased variance of its input
        first = nn.Sequential(*net[:1])(torch.from_numpy(((x - np.asarray(pre.mean, np.float32)) /
                                                          np.asarray(pre.std, np.float32)).astype(np.float32)))
        np.testing.assert_allclose(rc.normalization["1"].var, first.detach().numpy().var(axis=(0, 2)), rtol=1e-4)


def test_candidates_bind_their_own_caches_and_the_adapter_carries_the_choice(lab, tmp_path):
    folder, _, x, y = lab
    bb = Backbone(folder)
    identities = [b.identity for _, b in recalibrate.candidates(bb, as_inputs(x, bb.manifest))]
    assert len(set(identities)) == 4 and identities[0] == bb.identity
    adapter, history = finetune(bb, x, y, TrainConfig(epochs=6, recalibrate="auto"))
    recal = history.selection["recalibration"]
    assert set(recal["scores"]) == {"none", "input", "bn", "both"} and recal["chosen"] in recal["scores"]
    key = {k: (recal["scores"][k], -recal["losses"][k]) for k in recal["scores"]}
    assert recal["chosen"] == [k for k in key if key[k] == max(key.values())][0]   # then the simpler
    forced, _ = finetune(bb, x, y, TrainConfig(epochs=6, recalibrate="both"))
    assert forced.config.recalibration.kind == "both" and forced.config.training["recalibration"] == {"chosen": "both"}
    forced.save(tmp_path / "a")
    loaded = load_adapter(tmp_path / "a", bb.manifest)
    assert loaded.config.recalibration == forced.config.recalibration
    assert "recalibration" in json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    plain, _ = finetune(bb, x, y, TrainConfig(epochs=6))
    assert plain.config.recalibration is None
    plain.save(tmp_path / "plain")
    assert "recalibration" not in json.loads((tmp_path / "plain" / "adapter_config.json").read_text())


def test_merged_model_and_server_equal_the_predictor_with_recalibration(lab, tmp_path):
    folder, _, x, y = lab
    bb = Backbone(folder)
    adapter, _ = finetune(bb, x, y, TrainConfig(epochs=6, recalibrate="both"))
    adapter.save(tmp_path / "a")
    want = Predictor(bb, adapter).outputs(x)
    assert np.abs(want - Predictor(bb.recalibrated(adapter.config.recalibration), adapter).outputs(x)).max() == 0
    merge(folder, tmp_path / "a", tmp_path / "m.onnx")
    got = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert np.abs(got - want).max() <= 1e-5
    store = AdapterStore(tmp_path / "store")
    store.set_current("dev", store.add_version("dev", adapter, parent=None, samples=len(x)).version)
    server = AdapterServer(bb, store, ServeConfig(poll_seconds=0, batch_size=7))
    names = ["dev", None] * 30
    served = server.outputs(x, names)
    np.testing.assert_allclose(served[::2], want[::2], atol=1e-6)
    np.testing.assert_allclose(served[1::2], bb.run(x[1::2])[0], atol=1e-6)
    with pytest.raises(ValueError, match="re-calibrated normalisation statistics.*merge"):
        export_ort_adapter(folder, tmp_path / "a", tmp_path / "a.onnx_adapter")


def test_error_recalibration_that_does_not_fit_the_bundle(lab, tmp_path):
    folder, _, x, y = lab
    bb = Backbone(folder)
    with pytest.raises(ValueError, match=r"re-estimates batch-norm layer\(s\) \['nope'\].*\['1', '4', '9'\]"):
        bb.recalibrated(Recalibration("bn", 5, {}, {"nope": LayerStats([0.0], [1.0])}))
    with pytest.raises(ValueError, match="layer `1` should have 8 channels, found 2"):
        bb.recalibrated(Recalibration("bn", 5, {}, {"1": LayerStats([0.0, 0.0], [1.0, 1.0])}))
    with pytest.raises(ValueError, match=r"input `input` `mean` should have shape \(3, 1\)"):
        bb.recalibrated(Recalibration("input", 5, {"input": {"mean": 0.0, "std": 1.0}}))
    with pytest.raises(ValueError, match="`var` finite and >= 0"):
        LayerStats([0.0], [-1.0])
    with pytest.raises(ValueError, match="at least 2 samples"):
        recalibrate.estimate(bb, as_inputs(x[:1], bb.manifest), "bn")
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "recalibrate.onnx").write_bytes((broken / "recalibrate.onnx").read_bytes()[:-10])
    with pytest.raises(ValueError, match="recalibrate.onnx does not match the manifest.*re-export"):
        recalibrate.estimate(Backbone(broken), as_inputs(x, bb.manifest), "bn")
    adapter, _ = finetune(bb, x, y, TrainConfig(epochs=2, recalibrate="bn"))
    adapter.save(tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    cfg["recalibration"]["normalization"]["4"]["mean"][0] += 1.0       # the statistics it was trained with changed
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="adapter_config.json is corrupt or was edited"):
        load_adapter(tmp_path / "a", bb.manifest)
    rc = adapter.config.recalibration
    other = {**rc.normalization, "4": LayerStats([v + 1.0 for v in rc.normalization["4"].mean], rc.normalization["4"].var)}
    adapter.config = dataclasses.replace(adapter.config, recalibration=dataclasses.replace(rc, normalization=other))
    with pytest.raises(ValueError, match="belongs to another backbone.*re-calibrated with the adapter's `recalibration`"):
        Predictor(bb, adapter)
