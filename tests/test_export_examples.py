"""The README's export examples as a new user writes them.

4. `preprocess={"input": {"mean": m, "std": s}}` (the documented form) beside the `(mean, std)` pair; a wrong
   input name is refused naming the real ones (an nn.Sequential's input is named `input`).
5. `edgelora export program.pt2` of a plain `torch.export.export(net, (x,))` (a static batch of 1) gives a
   bundle with a dynamic batch, without a stray warning; a graph that bakes the batch in is refused in one line.
"""
from __future__ import annotations

import numpy as np
import pytest

from edgelora.files.bundle import Standardize, as_preprocess

# --- item 4: no torch needed for the parser ----------------------------------------------------------


def test_preprocess_accepts_the_readme_dict_form_the_pair_and_arrays():
    got = as_preprocess({"input": {"mean": np.array([1.0, 2.0]), "std": 3}, "b": (0.5, [1, 2])}, ["input", "b"])
    assert got == {"input": Standardize([1.0, 2.0], 3.0), "b": Standardize(0.5, [1.0, 2.0])}


@pytest.mark.parametrize("pre, error, match", [
    ({"x": {"mean": 0.0, "std": 1.0}}, ValueError,
     r"names unknown input\(s\) \['x'\]; the model's inputs are \['input'\] \(an nn.Sequential's input is named"),
    ({"input": {"mean": 0.0, "sd": 1.0}}, ValueError, r"preprocess\['input'\]: expected keys \['mean', 'std'\], found"),
    ({"input": {"mean": "0", "std": 1.0}}, TypeError, r"`mean` should be a number or an array of numbers, found str"),
    ({"input": (0.0, 1.0, 2.0)}, TypeError, r"or a \(mean, std\) pair, found tuple of length 3"),
    ({"input": {"mean": 0.0, "std": 0.0}}, ValueError, r"`std` should be > 0"),
])
def test_error_preprocess(pre, error, match):
    with pytest.raises(error, match=match):
        as_preprocess(pre, ["input"])


# --- with torch -----------------------------------------------------------------------------------------

torch_only = pytest.mark.torch


def _net():
    import torch
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3)).eval()


@torch_only
def test_export_model_with_the_readme_preprocess_form(tmp_path):
    import torch

    from edgelora import Backbone
    from edgelora_export import export_model
    m, s = np.linspace(-1, 1, 6), np.linspace(1, 2, 6)
    manifest = export_model(_net(), torch.randn(1, 6), tmp_path / "b", preprocess={"input": {"mean": m, "std": s}})
    assert np.allclose(manifest.preprocess["input"].mean, m) and np.allclose(manifest.preprocess["input"].std, s)
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    want = _net()(torch.from_numpy(((x - m) / s).astype(np.float32))).detach().numpy()
    np.testing.assert_allclose(Backbone(tmp_path / "b").run(x)[0], want, atol=1e-5)


@torch_only
def test_error_export_model_preprocess_names_the_real_input(tmp_path):
    import torch

    from edgelora_export import export_model
    with pytest.raises(ValueError, match=r"\['x'\]; the model's inputs are \['input'\]"):
        export_model(_net(), torch.randn(1, 6), tmp_path / "b", preprocess={"x": {"mean": 0.0, "std": 1.0}})
    assert not (tmp_path / "b").exists()


@torch_only
def test_cli_export_of_a_static_batch_program(tmp_path, capsys):
    import torch

    from edgelora import Backbone
    from edgelora.cli import main
    net = _net()
    torch.export.save(torch.export.export(net, (torch.randn(1, 6),)), str(tmp_path / "program.pt2"))  # the README's
    assert main(["export", str(tmp_path / "program.pt2"), "--out", str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    assert err == "", err                                   # no stray deprecation line
    backbone = Backbone(tmp_path / "b")
    assert backbone.manifest.inputs[0].shape[0] == "batch"
    x = torch.randn(7, 6)
    np.testing.assert_allclose(backbone.run(x.numpy())[0], net(x).detach().numpy(), atol=1e-5)


class _BakedBatch:
    """A module whose graph bakes the batch of 1 in (view(1, -1)), and one that mixes samples."""

    @staticmethod
    def make(kind: str):
        import torch

        class Baked(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.f = torch.nn.Linear(6, 3)

            def forward(self, x):
                return self.f(x.view(1, -1)) if kind == "view" else self.f(x - x.mean(0, keepdim=True))
        return Baked().eval()


@torch_only
@pytest.mark.parametrize("kind, match", [
    ("view", r"static batch of 1 and its graph depends on it .*re-export it with a dynamic batch: "
             r"torch.export.export\(model, \(x,\), dynamic_shapes="),
    ("mix", r"static batch of 1, and its output for a sample depends on the other samples"),
])
def test_error_cli_export_of_a_batch_bound_program(tmp_path, capsys, kind, match):
    import re

    import torch

    from edgelora.cli import main
    torch.export.save(torch.export.export(_BakedBatch.make(kind), (torch.randn(1, 6),)), str(tmp_path / "p.pt2"))
    assert main(["export", str(tmp_path / "p.pt2"), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(match, err), err
    assert not (tmp_path / "b").exists()
