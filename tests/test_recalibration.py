"""files/recalibration and the device side without torch: old bundles (no batch-norm record) keep working, the
input standardisation is re-estimated as numpy computes it, and a bad setting is refused clearly."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edgelora import Backbone, Predictor, TrainConfig, finetune
from edgelora.files.bundle import MANIFEST_FILE, load_manifest
from edgelora.files.data import as_inputs
from edgelora.files.recalibration import Recalibration, recalibrated
from edgelora.graphs.merge import merge
from edgelora.runtime import recalibrate
from tests.helpers import mlp_bundle, random_mlp

RNG = np.random.default_rng(3)


@pytest.fixture(scope="module")
def old(tmp_path_factory):
    """A bundle as edgelora wrote it before batch-norm records (per-feature standardisation), shifted samples."""
    folder = tmp_path_factory.mktemp("old") / "bundle"
    mlp_bundle(folder, random_mlp([10, 16, 3]), mean=np.zeros(10, np.float32), std=np.ones(10, np.float32))
    x = (RNG.standard_normal((40, 10)) * 3 + 2).astype(np.float32)
    return folder, x, RNG.integers(0, 3, 40)


def test_old_bundle_has_no_batch_norm_candidate_and_reads_as_before(old):
    folder, x, y = old
    written = json.loads((folder / MANIFEST_FILE).read_text())
    assert "normalization" not in written and "recalibration_model" not in written
    m = load_manifest(folder)                   # its checksum and identity are computed as before
    assert m.normalization == () and recalibrate.available(m) == ["none", "input"]
    assert recalibrated(m, None) is m and recalibrated(m, Recalibration()) is m
    with pytest.raises(ValueError, match="`recalibrate` 'bn' needs a bundle with batch-norm layers.*re-export"):
        finetune(Backbone(folder), x, y, TrainConfig(epochs=2, recalibrate="bn"))


def test_input_statistics_are_the_samples_mean_and_std(old, tmp_path):
    folder, x, y = old
    bb = Backbone(folder)
    rc = recalibrate.estimate(bb, as_inputs(x, bb.manifest), "input")
    np.testing.assert_allclose(rc.preprocess["x"].mean, x.astype(np.float64).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(rc.preprocess["x"].std, x.astype(np.float64).std(axis=0), rtol=1e-12)
    const = x.copy()
    const[:, 3] = 5.0                           # a constant feature keeps the lab's std (no division by 0)
    assert recalibrate.estimate(bb, as_inputs(const, bb.manifest), "input").preprocess["x"].std[3] == 1.0
    adapter, _ = finetune(bb, x, y, TrainConfig(epochs=4, recalibrate="input"))
    adapter.save(tmp_path / "a")
    merge(folder, tmp_path / "a", tmp_path / "m.onnx")
    import onnxruntime as ort
    got = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.abs(got - Predictor(bb, adapter).outputs(x)).max() <= 1e-5


def test_error_bad_recalibrate_setting(old):
    folder, x, y = old
    with pytest.raises(TypeError, match=r"`recalibrate`: expected one of \['none', 'auto'"):
        TrainConfig(recalibrate="sometimes")
    with pytest.raises(ValueError, match="recalibration `kind` should be one of"):
        Recalibration("all")
    with pytest.raises(ValueError, match=r"re-estimates the standardisation of input\(s\) \['y'\]"):
        Backbone(folder, recalibration=Recalibration("input", 3, {"y": {"mean": 0.0, "std": 1.0}}))


def test_cli_finetune_recalibrate_then_eval(old, tmp_path, capsys):
    from edgelora.cli import main
    folder, x, y = old
    np.savez(tmp_path / "d.npz", x=x, y=y)
    code = main(["finetune", str(folder), "--data", str(tmp_path / "d.npz"), "--out", str(tmp_path / "a"),
                 "--epochs", "3", "--recalibrate", "auto", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and set(out["cross_validation"]["recalibration"]["scores"]) == {"none", "input"}
    code = main(["eval", str(folder), "--adapter", str(tmp_path / "a"), "--data", str(tmp_path / "d.npz"), "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out)["samples"] == len(x)
    code = main(["finetune", str(folder), "--data", str(tmp_path / "d.npz"), "--out", str(tmp_path / "b"),
                 "--recalibrate", "bn"])
    assert code != 0 and "needs a bundle with batch-norm layers" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_warm_start_keeps_the_adapters_recalibration(old):
    from edgelora.files.data import as_targets
    from edgelora.runtime.features import prepare
    from edgelora.runtime.train import finetune_features
    folder, x, y = old
    bb = Backbone(folder)
    first, _ = finetune(bb, x, y, TrainConfig(epochs=2, recalibrate="input"))
    again, _ = finetune(bb, x, y, TrainConfig(epochs=2), init=first)     # over the same re-calibrated backbone
    assert again.config.backbone_fingerprint == first.config.backbone_fingerprint
    assert again.config.recalibration == first.config.recalibration
    features, targets, split = prepare(bb, x, y, TrainConfig(epochs=2))   # the lab's rows: refused
    with pytest.raises(ValueError, match="initial adapter was trained over re-calibrated statistics"):
        finetune_features(features, as_targets(y, bb.manifest, len(y)), split, TrainConfig(epochs=2), init=first)
