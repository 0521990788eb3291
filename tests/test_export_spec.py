"""export.export_from_spec: what `edgelora export MODEL` takes (.pt2 program, or factory + state dict)."""
from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")

from edgelora import Backbone  # noqa: E402
from edgelora_export.models import CNN1d, MLP  # noqa: E402
from edgelora_export.spec import export_from_spec, parse_example  # noqa: E402


def make_mlp():
    """Factory used as `tests.test_export_spec:make_mlp`."""
    return MLP(8, 3, hidden=(6,))


def not_a_model():
    return 42


def test_pt2_program_keeps_layer_kinds_and_stored_example(tmp_path):
    torch.manual_seed(0)
    model = CNN1d(3, 4, width=8).eval()
    x = torch.randn(4, 16, 3)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(tmp_path / "m.pt2"))
    m = export_from_spec(str(tmp_path / "m.pt2"), tmp_path / "b")       # example: the one stored in the program
    assert [(t.name, t.width, t.pooling) for t in m.taps] == [("conv1.input", 3, "global_avg"),
                                                               ("conv2.input", 8, "global_avg"), ("head.input", 8, "none")]
    z = torch.randn(9, 16, 3)
    np.testing.assert_allclose(Backbone(tmp_path / "b").run(z.numpy())[0], model(z).detach().numpy(), atol=1e-5)


def test_error_pt2_exported_in_training_mode(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.3), torch.nn.Linear(4, 2)).train()
    torch.export.save(torch.export.export(model, (torch.randn(3, 4),)), str(tmp_path / "m.pt2"))
    with pytest.raises(ValueError, match=r"exported in training mode \(aten.dropout.*call model.eval\(\)"):
        export_from_spec(str(tmp_path / "m.pt2"), tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_factory_with_weights_and_npy_example(tmp_path):
    torch.manual_seed(1)
    trained = make_mlp().eval()
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    m = export_from_spec("tests.test_export_spec:make_mlp", tmp_path / "b", taps=["head"],
                         example=str(tmp_path / "x.npy"), weights=tmp_path / "w.pt", task="classification",
                         classes=["a", "b", "c"])
    assert m.tap_names == ("head.input",) and m.classes == ("a", "b", "c")
    np.testing.assert_allclose(Backbone(tmp_path / "b").run(x)[0], trained(torch.from_numpy(x)).detach().numpy(),
                               atol=1e-5)


def test_shape_examples():
    assert parse_example("1,512").shape == (1, 512)
    assert parse_example("8x128x6").shape == (8, 128, 6)
    assert parse_example((2, 3)).shape == (2, 3)
    with pytest.raises(ValueError, match="shape like 1,512"):
        parse_example("1,abc")


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="MODEL should be a .pt2 file or package.module:factory"):
        export_from_spec("model.onnx", tmp_path / "b", example="1,4")
    with pytest.raises(FileNotFoundError, match="torch.export program not found"):
        export_from_spec(str(tmp_path / "missing.pt2"), tmp_path / "b")
    with pytest.raises(ValueError, match="cannot import `no_such_pkg`"):
        export_from_spec("no_such_pkg:f", tmp_path / "b", example="1,4")
    with pytest.raises(ValueError, match="has no attribute `nope`"):
        export_from_spec("tests.test_export_spec:nope", tmp_path / "b", example="1,8")
    with pytest.raises(TypeError, match="should return a torch.nn.Module, found int"):
        export_from_spec("tests.test_export_spec:not_a_model", tmp_path / "b", example="1,8")
    with pytest.raises(ValueError, match="an example input is needed"):
        export_from_spec("tests.test_export_spec:make_mlp", tmp_path / "b")
    torch.save({"bogus": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"does not fit .*missing keys \['hidden.0.weight'"):
        export_from_spec("tests.test_export_spec:make_mlp", tmp_path / "b", example="2,8", weights=tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        export_from_spec("tests.test_export_spec:make_mlp", tmp_path / "b", example="2,8", weights=tmp_path / "x.pt")
    assert not (tmp_path / "b").exists()
