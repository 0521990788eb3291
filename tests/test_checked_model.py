"""A bundle's ONNX file checked without holding it in memory (files/bundle.py checked_model, verify_bundle)."""
import os
import tracemalloc

import numpy as np
import pytest

from edgelora import Backbone
from edgelora.files.bundle import checked_model, load_manifest, verify_bundle
from tests.helpers import mlp_bundle, mlp_onnx, random_mlp


def test_verify_bundle_reads_the_model_in_chunks(tmp_path):
    """A 1 GiB model was read whole (1 GiB of Python bytes) to check its fingerprint."""
    mlp_bundle(tmp_path / "b", random_mlp([64, 2048, 2048, 10]))   # a 17 MB ONNX file
    size = (tmp_path / "b" / "backbone.onnx").stat().st_size
    tracemalloc.start()
    verify_bundle(tmp_path / "b")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert size > 16e6 and peak < 3e6, (size, peak)


def test_onnxruntime_runs_the_file_that_was_checked_even_if_the_bundle_is_replaced_meanwhile(tmp_path):
    layers, other = random_mlp([4, 8, 3]), random_mlp([4, 8, 3], seed=1)
    mlp_bundle(tmp_path / "b", layers)
    checked = (tmp_path / "b" / "backbone.onnx").read_bytes()
    manifest = load_manifest(tmp_path / "b")
    with checked_model(tmp_path / "b", manifest) as (model, external):
        replacement = tmp_path / "new.onnx"
        replacement.write_bytes(mlp_onnx(other)[0])
        os.replace(replacement, tmp_path / "b" / "backbone.onnx")   # as an atomic re-export would
        with open(model, "rb") as f:
            assert f.read() == checked and external == {}


def test_error_a_model_written_to_while_it_loads(tmp_path):
    mlp_bundle(tmp_path / "b", random_mlp([4, 8, 3]))
    manifest = load_manifest(tmp_path / "b")
    with pytest.raises(ValueError, match="backbone.onnx was written to while it was being loaded; load the bundle again"):
        with checked_model(tmp_path / "b", manifest):
            with open(tmp_path / "b" / "backbone.onnx", "ab") as f:
                f.write(b"\0")


def test_the_backbone_loaded_from_the_checked_file_computes_the_model(tmp_path):
    layers = random_mlp([4, 8, 3])
    mlp_bundle(tmp_path / "b", layers)
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    want = np.maximum(x @ layers[0][0] + layers[0][1], 0) @ layers[1][0] + layers[1][1]
    y0, _ = Backbone(tmp_path / "b").features(x)
    np.testing.assert_allclose(y0, want, rtol=1e-5, atol=1e-5)
