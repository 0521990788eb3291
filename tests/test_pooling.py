"""Feature-map pooling at export: each pooling's taps equal a numpy reference on the raw feature map, and
a merged model equals the Predictor with the wider taps."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")

from edgelora import Backbone, Predictor, TrainConfig, finetune  # noqa: E402
from edgelora.graphs.merge import merge  # noqa: E402
from edgelora_export import export_model  # noqa: E402
from edgelora_export.models import CNN1d, CNN2d  # noqa: E402
from edgelora_export.taps import FEATURE_MAP_POOLINGS  # noqa: E402


def reference_pool(fmap: np.ndarray, pooling: str) -> np.ndarray:
    """numpy: (N, C, L...) feature map -> (N, width) as the manifest's pooling names it."""
    axes = tuple(range(2, fmap.ndim))
    f = fmap.astype(np.float64)
    if pooling == "global_avg":
        return f.mean(axis=axes)
    if pooling == "global_avg_std":
        return np.concatenate([f.mean(axis=axes), f.std(axis=axes)], axis=1)
    s = int(pooling.rsplit("_", 1)[1])
    cuts = [i * f.shape[2] // s for i in range(s + 1)]
    parts = [f[:, :, a:b].mean(axis=axes) for a, b in zip(cuts[:-1], cuts[1:])]
    return np.stack(parts, axis=2).reshape(len(f), -1)


def _feature_maps(model, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """The input of each named conv module, captured with forward pre-hooks."""
    seen = {}

    def keep(name):
        def hook(module, args):           # returns None: the input goes on unchanged
            seen.setdefault(name, args[0].detach().numpy())
        return hook
    hooks = [model.get_submodule(n).register_forward_pre_hook(keep(n)) for n in names]
    with torch.no_grad():
        model(torch.from_numpy(x))
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("family,pooling", [("cnn1d", p) for p in FEATURE_MAP_POOLINGS] +
                         [("cnn2d", "global_avg_std"), ("cnn2d", "segment_avg_4")])
def test_pooled_taps_equal_numpy_reference(tmp_path, family, pooling):
    torch.manual_seed(0)
    model = (CNN1d(3, 4) if family == "cnn1d" else CNN2d(4, 8)).eval()
    shape = (40, 3) if family == "cnn1d" else (20, 12)
    x = np.random.default_rng(0).standard_normal((6, *shape)).astype(np.float32)
    manifest = export_model(model, torch.from_numpy(x[:2]), tmp_path / "bundle", pooling=pooling)
    convs = [t.name[:-len(".input")] for t in manifest.taps if t.pooling != "none"]
    assert convs and all(t.pooling in (pooling, "global_avg") for t in manifest.taps if t.pooling != "none")
    maps = _feature_maps(model, x, convs)
    _, taps = Backbone(tmp_path / "bundle").features({"x": x})
    for t, (a, b) in zip(manifest.taps, _bounds(manifest)):
        if t.pooling == "none":
            continue
        want = reference_pool(maps[t.name[:-len(".input")]], t.pooling)
        assert want.shape[1] == t.width
        np.testing.assert_allclose(taps[:, a:b], want, rtol=1e-4, atol=1e-5)


def _bounds(manifest):
    ends = np.cumsum((0,) + tuple(manifest.tap_widths)).tolist()
    return list(zip(ends[:-1], ends[1:]))


def test_merged_model_equals_predictor_with_wider_taps(tmp_path):
    torch.manual_seed(0)
    model = CNN1d(3, 4).eval()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((80, 40, 3)).astype(np.float32)
    y = rng.integers(0, 4, 80)
    manifest = export_model(model, torch.from_numpy(x[:2]), tmp_path / "bundle", pooling="segment_avg_4")
    assert manifest.tap_widths[0] == 3 * 4
    backbone = Backbone(tmp_path / "bundle")
    adapter, _ = finetune(backbone, x, y, TrainConfig(epochs=4, batch_size=10, tap_scaling="standard", form="skip", cv_folds=0))
    merge(tmp_path / "bundle", adapter, tmp_path / "merged.onnx")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    out = ort.InferenceSession(str(tmp_path / "merged.onnx"), opts).run(None, {"x": x})[0]
    assert np.abs(out - Predictor(backbone, adapter).outputs(x)).max() <= 1e-5


def test_error_unknown_pooling(tmp_path):
    with pytest.raises(ValueError, match="`pooling` should be one of"):
        export_model(CNN1d(3, 4).eval(), torch.zeros(2, 40, 3), tmp_path / "bundle", pooling="max")
