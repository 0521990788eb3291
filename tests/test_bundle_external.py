"""Bundles whose ONNX model keeps weights in external-data files: every file inside the bundle, listed in the
manifest with its SHA-256, read from there and nowhere else (never from the current folder)."""
import dataclasses
import json
import os

import numpy as np
import onnx
import pytest

from edgelora import Backbone
from edgelora.files.bundle import MANIFEST_FILE, load_manifest, verify_bundle, write_bundle
from tests.helpers import mlp_bundle, random_mlp
from tests.test_onnx_refs import external_model

LAYERS = random_mlp([4, 3, 2])


def external_bundle(tmp_path, location="weights.bin", listed=True):
    """A bundle of LAYERS whose weights are in `location`; `listed`: the file and its digest in the manifest."""
    (tmp_path / "src").mkdir()
    blob, data = external_model(tmp_path / "src", location)
    template = load_manifest(_plain(tmp_path))
    folder = tmp_path / "ext"
    manifest = write_bundle(folder, blob, template, external={location: data} if listed else None)
    return folder, manifest, data


def _plain(tmp_path):
    mlp_bundle(tmp_path / "plain", LAYERS)
    return tmp_path / "plain"


def test_listed_external_data_runs_and_matches_the_inline_model(tmp_path):
    folder, manifest, _ = external_bundle(tmp_path)
    assert list(manifest.external_data) == ["weights.bin"]
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_allclose(Backbone(folder).rows(x), Backbone(tmp_path / "plain").rows(x), rtol=1e-6)


def test_error_relative_location_is_never_read_from_the_current_folder(tmp_path, monkeypatch):
    """A model naming `weights.bin` that the bundle does not list: before, onnxruntime read the file of that
    name from wherever the process ran (a private key became weights); now the bundle is refused."""
    folder, _, data = external_bundle(tmp_path, listed=False)
    (folder / "weights.bin").unlink(missing_ok=True)
    here = tmp_path / "cwd"
    here.mkdir()
    (here / "weights.bin").write_bytes(data)        # the attacker's "secret" in the current folder
    monkeypatch.chdir(here)
    with pytest.raises(ValueError, match="does not list"):
        Backbone(folder)
    with pytest.raises(ValueError, match="does not list"):
        verify_bundle(folder)


@pytest.mark.parametrize("location", ["../weights.bin", "/tmp/weights.bin", "sub/weights.bin"])
def test_error_locations_outside_the_bundle_are_refused(tmp_path, location):
    blob, data = external_model(tmp_path, "weights.bin")
    model = onnx.load_from_string(blob)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    manifest = load_manifest(_plain(tmp_path))
    manifest = dataclasses.replace(manifest, external_data={})
    folder = tmp_path / "b"
    write_bundle(folder, model.SerializeToString(), manifest)
    (tmp_path / "weights.bin").write_bytes(data)
    with pytest.raises(ValueError, match="does not list"):
        Backbone(folder)


def test_error_a_changed_external_file_is_refused_and_named(tmp_path):
    """The fingerprint covered only the .onnx file: a replaced weights file went unnoticed (merge wrote a
    bias of 5.3e37). Now its SHA-256 is in the checksummed manifest."""
    folder, _, data = external_bundle(tmp_path)
    flipped = bytearray(data)
    flipped[7] ^= 0x40
    (folder / "weights.bin").write_bytes(bytes(flipped))
    for load in (Backbone, verify_bundle):
        with pytest.raises(ValueError, match="weights.bin.*does not match the manifest"):
            load(folder)


def test_error_an_external_file_that_links_outside_is_refused(tmp_path):
    folder, _, data = external_bundle(tmp_path)
    (tmp_path / "elsewhere.bin").write_bytes(data)
    (folder / "weights.bin").unlink()
    os.symlink(tmp_path / "elsewhere.bin", folder / "weights.bin")
    with pytest.raises(ValueError, match="outside"):
        Backbone(folder)


def test_error_manifest_external_data_names_must_be_plain(tmp_path):
    folder, _, _ = external_bundle(tmp_path)
    doc = json.loads((folder / MANIFEST_FILE).read_text())
    doc["external_data"] = {"../x": "0" * 64}
    doc.pop("checksum")
    (folder / MANIFEST_FILE).write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="plain file names"):
        load_manifest(folder)


def test_merge_bakes_in_the_checked_external_weights(tmp_path, toy_data):
    from edgelora.graphs.merge import lora_model
    import onnxruntime as ort
    folder, _, _ = external_bundle(tmp_path)
    out = lora_model(folder, tmp_path / "switch.onnx")
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    s = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(s.run(None, {"x": x})[0], Backbone(folder).rows(x)[:, :2], rtol=1e-5)


def test_error_merge_refuses_a_changed_external_file_clearly(tmp_path):
    from edgelora.graphs.merge import lora_model
    folder, _, data = external_bundle(tmp_path)
    (folder / "weights.bin").write_bytes(data[:-4] + b"\x00\x00\xc0\x7f")
    with pytest.raises(ValueError, match="weights.bin.*does not match"):
        lora_model(folder, tmp_path / "switch.onnx")
    assert not (tmp_path / "switch.onnx").exists()


def test_error_cli_merge_names_an_unlisted_external_file_and_exits_2(tmp_path, capsys):
    """`merge` exited 1 on onnx's own external-data refusals; now the bundle is refused with one clear line."""
    from edgelora.cli import main
    folder, _, _ = external_bundle(tmp_path, listed=False)
    code = main(["merge", str(folder), "--format", "lora_model", "--out", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and "does not list" in err and len(err.strip().splitlines()) == 1
