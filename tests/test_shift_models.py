"""device_bench/shift_models.py: which recorded recipes keep their pre-trained weights when the export changed."""
import pytest

pytest.importorskip("torch")
from device_bench import shift_models  # noqa: E402


def test_only_the_export_fields_may_differ_for_the_weights_to_be_kept():
    recipe = {"kind": "mlp", "kwargs": {"d_in": 768, "classes": 6}, "epochs": 30, "lr": 1e-3, "seed": 0,
              "export": shift_models.EXPORT, "bundle_format": 1}
    old = {k: v for k, v in recipe.items() if k not in ("export", "bundle_format")}   # written before the marker
    assert shift_models.same_weights(old, recipe)
    assert not shift_models.same_weights({**old, "epochs": 31}, recipe)
    assert not shift_models.same_weights({**old, "kwargs": {"d_in": 768, "classes": 7}}, recipe)


def test_a_bundle_from_an_older_export_is_re_exported_with_its_weights(tmp_path, monkeypatch):
    import json

    import numpy as np
    import torch
    monkeypatch.setitem(shift_models.BACKBONES, "tiny", {"mlp": ("mlp", {"d_in": 8, "classes": 2}, 1, 1e-3)})
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 8)).astype(np.float32), np.arange(64) % 2
    data = {"source": (x, y), "test_clean": (x, y), "test": (x, y), "classes": ["a", "b"],
            "mean": np.zeros(8, np.float32), "std": np.ones(8, np.float32)}
    logs = []
    folder = shift_models.bundle("tiny", "mlp", data, tmp_path, log=logs.append)
    weights = torch.load(folder / "model.pt", weights_only=True)
    recipe = json.loads((folder / "model.json").read_text())
    old = {k: v for k, v in recipe.items() if k not in ("export", "bundle_format")}
    (folder / "model.json").write_text(json.dumps(old))            # as an older export recorded it
    assert shift_models.bundle("tiny", "mlp", data, tmp_path, log=logs.append) == folder
    assert any("re-exporting tiny/mlp" in line for line in logs)
    assert json.loads((folder / "model.json").read_text()) == recipe
    again = torch.load(folder / "model.pt", weights_only=True)
    assert all(torch.equal(weights[k], again[k]) for k in weights)
