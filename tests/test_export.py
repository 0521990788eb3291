"""export.export_model: torch module + example -> verified bundle; bad input gets clear errors."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from edgelora import Backbone  # noqa: E402
from edgelora.files.bundle import load_manifest  # noqa: E402
from edgelora_export import export_model  # noqa: E402
from edgelora_export.models import MLP  # noqa: E402
from edgelora_export.taps import select_output  # noqa: E402


class OneLinear(nn.Module):
    """x -> then(fc, x) with fc = nn.Linear(4, width): a one-layer model whose forward does something odd."""

    def __init__(self, width: int, then):
        super().__init__()
        self.fc, self.then = nn.Linear(4, width), then

    def forward(self, x):
        return self.then(self.fc, x)


def _siblings(path):
    return sorted(p.name for p in path.parent.iterdir())


def test_mlp_bundle_matches_torch_for_any_batch(tmp_path):
    torch.manual_seed(0)
    model = MLP(12, 3, hidden=(16, 8)).eval()
    m = export_model(model, torch.randn(4, 12), tmp_path / "b", preprocess={"x": (np.zeros(12), np.ones(12))})
    assert [t.name for t in m.taps] == ["hidden.0.input", "hidden.1.input", "head.input"]
    assert m.tap_widths == (12, 16, 8) and m.output.name == "logits" and m.output.width == 3
    assert m.inputs[0].shape == ("batch", 12) and m.classes == ("0", "1", "2")
    assert float(m.producer["max_rel_diff"]) <= 1e-4
    assert load_manifest(tmp_path / "b") == m
    again = export_model(model, torch.randn(4, 12), tmp_path / "again", preprocess={"x": (np.zeros(12), np.ones(12))})
    assert again.fingerprint == m.fingerprint                   # same weights, same bytes (no stack traces/paths)
    backbone = Backbone(tmp_path / "b")
    for n in (1, 7, 300):                                       # dynamic batch (Backbone chunks by 256)
        x = torch.randn(n, 12)
        y0, taps = backbone.run(x.numpy())
        np.testing.assert_allclose(y0, model(x).detach().numpy(), atol=1e-5)
        np.testing.assert_allclose(taps[0], x.numpy(), atol=0)
        np.testing.assert_allclose(taps[2], torch.relu(model.hidden[1](torch.relu(model.hidden[0](x))))
                                   .detach().numpy(), atol=1e-5)


def test_training_mode_is_exported_in_eval_mode_with_a_warning(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 2))
    model(torch.randn(32, 6))                                   # move the running statistics off their defaults
    with pytest.warns(UserWarning, match=r"training mode with 1 \(BatchNorm1d\), 3 \(Dropout\): exported in eval"):
        export_model(model, torch.randn(4, 6), tmp_path / "b")
    assert model.training                                       # the caller's mode is restored
    x = torch.randn(5, 6)
    np.testing.assert_allclose(Backbone(tmp_path / "b").run(x.numpy())[0], model.eval()(x).detach().numpy(), atol=1e-5)


def test_explicit_taps_sharing_one_tensor_and_tapping_the_input(tmp_path):
    """q/k/v read one tensor and the first tap is the graph input itself: output names must not clash."""
    class QKV(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.q(x) * self.k(x) + self.v(x))
    model = QKV().eval()
    m = export_model(model, torch.randn(3, 4), tmp_path / "b", taps=["q", "k.input", "v"])
    assert [t.output for t in m.taps] == ["tap.q.input", "tap.k.input", "tap.v.input"]
    x = torch.randn(2, 4)
    _, taps = Backbone(tmp_path / "b").run(x.numpy())
    assert all(np.array_equal(t, x.numpy()) for t in taps)
    auto = export_model(model, torch.randn(3, 4), tmp_path / "auto")
    assert [(t.name, t.source) for t in auto.taps] == [("q.input", "q, k, v (Linear)"), ("head.input", "head (Linear)")]


def test_regression_and_example_as_numpy_batch_of_one(tmp_path):
    model = nn.Linear(5, 2).eval()
    m = export_model(model, np.ones((1, 5), np.float32), tmp_path / "b", task="regression")
    assert m.task == "regression" and m.classes == () and m.output.name == "values"
    assert Backbone(tmp_path / "b").run(np.ones((3, 5), np.float32))[0].shape == (3, 2)


def test_error_unknown_tap_lists_available(tmp_path):
    with pytest.raises(ValueError, match=r"unknown tap\(s\) \['fc9'\].*available: \['hidden.0', 'hidden.1', 'head'\]"):
        export_model(MLP(4, 2, hidden=(3, 3)).eval(), torch.randn(2, 4), tmp_path / "b", taps=["fc9"])
    assert _siblings(tmp_path / "b") == []


def test_error_onnx_torch_mismatch_leaves_no_bundle(tmp_path):
    """A random op inside the model: onnxruntime and torch cannot agree -> an error, nothing written."""
    noisy = OneLinear(2, lambda fc, x: fc(x + torch.rand_like(x)))
    (tmp_path / "keep").mkdir()
    with pytest.raises(ValueError, match="onnxruntime and torch disagree on the example: base output"):
        export_model(noisy.eval(), torch.randn(3, 4), tmp_path / "b")
    assert _siblings(tmp_path / "b") == ["keep"]


def test_error_unsupported_op_names_it(tmp_path):
    eig = OneLinear(4, lambda fc, x: torch.linalg.eigvalsh(fc(x).reshape(-1, 2, 2) @ fc(x).reshape(-1, 2, 2).mT))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="torch could not export the model to ONNX.*(linalg|eig)"):
            export_model(eig.eval(), torch.randn(3, 4), tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_error_several_outputs_need_a_choice(tmp_path):
    two = OneLinear(3, lambda fc, x: (fc(x), fc(x).sum(1)))
    with pytest.raises(ValueError, match="exactly one base output is needed: choose it with output=<index>"):
        export_model(two.eval(), torch.randn(3, 4), tmp_path / "b")
    assert export_model(two.eval(), torch.randn(3, 4), tmp_path / "b", output=0).output.width == 3


def test_error_bad_examples(tmp_path):
    model = nn.Linear(4, 2)
    with pytest.raises(TypeError, match="expected a tensor or numpy array, found list"):
        export_model(model, [[1.0, 2.0]], tmp_path / "b")
    with pytest.raises(ValueError, match="share the batch size"):
        export_model(model, (torch.randn(2, 4), torch.randn(3, 4)), tmp_path / "b", input_names=["a", "b"])
    with pytest.raises(ValueError, match="attention_mask `m` is not an input"):
        export_model(model, torch.randn(2, 4), tmp_path / "b", attention_mask="m")
    with pytest.raises(ValueError, match=r"base output should be a float tensor of shape \(batch, outputs\)"):
        select_output(torch.ones(3))
