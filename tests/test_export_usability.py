"""Export as a new user meets it: their module in the current folder, an .npz example that also holds the
labels, an input named like a mask, a layer whose output the model never uses."""
from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from edgelora_export.spec import export_from_spec  # noqa: E402
from edgelora_export.torch_export import export_model  # noqa: E402


class Tokens(nn.Module):
    """A tiny token classifier with BERT's shape: an encoder, a pooler whose output the head never reads."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.encoder = nn.Linear(8, 8)
        self.pooler = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, input_ids, attention_mask):
        h = torch.relu(self.encoder(self.embed(input_ids)))
        self.pooler(h[:, 0])                                   # computed, never used (as BertModel's pooler)
        w = attention_mask.unsqueeze(-1).float()
        return self.head((h * w).sum(1) / w.sum(1).clamp(min=1.0))


def token_example():
    ids = torch.randint(0, 20, (4, 6), generator=torch.Generator().manual_seed(0))
    return ids, torch.ones(4, 6, dtype=torch.int64)


def test_auto_taps_skip_a_layer_whose_output_is_never_used(tmp_path):
    m = export_model(Tokens().eval(), token_example(), tmp_path / "b", attention_mask="attention_mask")
    assert [t.name for t in m.taps] == ["encoder.input", "head.input"]


def test_named_taps_may_still_take_an_unused_layer(tmp_path):
    m = export_model(Tokens().eval(), token_example(), tmp_path / "b", ["pooler", "head"],
                     attention_mask="attention_mask")
    assert [t.name for t in m.taps] == ["pooler.input", "head.input"]


def test_an_input_named_like_a_mask_without_attention_mask_warns(tmp_path):
    with pytest.warns(UserWarning, match=r"'attention_mask' looks like an attention mask.*--attention-mask"):
        export_model(Tokens().eval(), token_example(), tmp_path / "b")


def test_factory_module_in_the_current_folder_needs_no_pythonpath(tmp_path, monkeypatch):
    (tmp_path / "my_user_model_5b1.py").write_text(textwrap.dedent("""
        from torch import nn
        def make():
            return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "my_user_model_5b1", raising=False)
    path_before = list(sys.path)
    m = export_from_spec("my_user_model_5b1:make", tmp_path / "b", example="2,4")
    assert m.tap_names == ("0.input", "2.input")
    assert sys.path == path_before                              # the folder was added for the import only


def test_error_npz_example_with_more_arrays_than_forward_takes(tmp_path, monkeypatch):
    (tmp_path / "my_user_model_5b2.py").write_text("from torch import nn\ndef make():\n    return nn.Linear(4, 2)\n")
    np.savez(tmp_path / "ex.npz", x=np.zeros((2, 4), np.float32), labels=np.zeros(2, np.int64))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"holds 2 arrays \['x', 'labels'\].*forward takes 1 input\(s\) \['input'\]"):
        export_from_spec("my_user_model_5b2:make", tmp_path / "b", example=str(tmp_path / "ex.npz"))
    assert not (tmp_path / "b").exists()
