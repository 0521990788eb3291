"""Every ONNX file edgelora writes declares opset <= 17 and IR <= 8, so older onnxruntimes load it.

Measured (see OLDEST_ORT in edgelora/graphs/onnx_utils.py): onnxruntime 1.15.0 and 1.17.0 (the oldest wheels
for Python 3.11 are 1.15.x) load and run bundles, merged models and the LoRA-input model. The
`.onnx_adapter` files need onnxruntime >= 1.20 (the first with LoRA adapters). To re-measure, point
EDGELORA_OLD_ORT_PYTHON at a Python whose onnxruntime is older, e.g.
    python3 -m venv /tmp/ort115 && /tmp/ort115/bin/pip install onnxruntime==1.15.0 "numpy<2"
    EDGELORA_OLD_ORT_PYTHON=/tmp/ort115/bin/python pytest tests/test_export_onnx_compat.py
"""
from __future__ import annotations

import os
import subprocess

import numpy as np
import onnx
import pytest

from edgelora import TrainConfig, finetune
from edgelora.runtime.backbone import Backbone
from edgelora.graphs.merge import lora_model, merge
from edgelora.graphs.onnx_taps import add_taps
from edgelora.graphs.onnx_utils import IR_VERSION, OLDEST_ORT, OPSET
from tests.test_onnx_taps import _mlp

OLD_PYTHON = os.environ.get("EDGELORA_OLD_ORT_PYTHON")


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """One file of each kind edgelora writes (the torch export only when torch is installed)."""
    folder = tmp_path_factory.mktemp("compat")
    model, _ = _mlp(opset=18, ir=10)          # a model written with a newer opset/IR than we allow
    add_taps(model, folder / "from_onnx")
    backbone = Backbone(folder / "from_onnx")
    rng = np.random.default_rng(0)
    adapter, _ = finetune(backbone, rng.standard_normal((60, 6)).astype(np.float32), rng.integers(0, 3, 60),
                          TrainConfig(epochs=2, batch_size=10))
    files = {"bundle_from_onnx": folder / "from_onnx" / "backbone.onnx",
             "merged": merge(folder / "from_onnx", adapter, folder / "merged.onnx"),
             "lora_inputs": lora_model(folder / "from_onnx", folder / "lora.onnx")}
    try:
        import torch

        from edgelora_export import export_model
        from edgelora_export.models import CNN1d
    except ImportError:
        return files
    torch.manual_seed(0)
    export_model(CNN1d(3, 2, width=4).eval(), torch.randn(2, 16, 3), folder / "from_torch")
    files["bundle_from_torch"] = folder / "from_torch" / "backbone.onnx"
    return files


def test_declared_versions_are_conservative(written):
    for kind, path in written.items():
        proto = onnx.load(str(path))
        assert proto.ir_version <= IR_VERSION, kind
        assert {op.domain or "ai.onnx": op.version for op in proto.opset_import} == {"ai.onnx": OPSET}, kind
        assert not proto.functions, kind
        onnx.checker.check_model(proto, full_check=True)


@pytest.mark.skipif(not OLD_PYTHON, reason="set EDGELORA_OLD_ORT_PYTHON to a Python with an older onnxruntime "
                                           f"(measured: {OLDEST_ORT} loads every file)")
def test_an_older_onnxruntime_runs_them(written):
    code = (
        "import sys, numpy as np, onnxruntime as ort\n"
        "for path in sys.argv[1:]:\n"
        "    s = ort.InferenceSession(path, providers=['CPUExecutionProvider'])\n"
        "    feed = {i.name: np.ones([2 if not isinstance(d, int) else d for d in i.shape], np.float32)\n"
        "            for i in s.get_inputs()}\n"
        "    assert all(o.shape[0] == 2 for o in s.run(None, feed)), path\n"
        "print(ort.__version__)\n")
    out = subprocess.run([OLD_PYTHON, "-c", code, *map(str, written.values())], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    print("onnxruntime", out.stdout.strip(), "ran", sorted(written))
