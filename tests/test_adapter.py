"""Adapter files: round trip, PEFT layout, atomic save, and refusal of mismatched or corrupt files."""
import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from edgelora import Backbone, Predictor, TrainConfig, finetune, load_adapter
from edgelora.files import fileio
from edgelora.files.adapter import CONFIG_FILE, WEIGHTS_FILE

CFG = TrainConfig(epochs=3, batch_size=10)


@pytest.fixture
def trained(toy_bundle, toy_data, tmp_path):
    bb = Backbone(toy_bundle)
    adapter, _ = finetune(bb, *toy_data, CFG)
    adapter.save(tmp_path / "ad")
    return bb, adapter, tmp_path / "ad"


def test_round_trip_gives_identical_predictions(trained, toy_data):
    bb, adapter, folder = trained
    loaded = load_adapter(folder, bb.manifest)
    np.testing.assert_array_equal(loaded.flat, adapter.flat)
    x = toy_data[0]
    np.testing.assert_array_equal(Predictor(bb, loaded).outputs(x), Predictor(bb, adapter).outputs(x))


def test_the_same_adapter_always_gives_the_same_bytes(trained, tmp_path):
    """safetensors writes its metadata in hash order: saves are made canonical (sorted metadata keys), so 12
    saves (each of which would pick one of two key orders) give one byte sequence; the file still loads."""
    bb, adapter, folder = trained
    blobs = set()
    for i in range(12):
        saved = adapter.save(tmp_path / f"copy{i}")
        blobs.add((saved / WEIGHTS_FILE).read_bytes() + (saved / CONFIG_FILE).read_bytes())
    assert len(blobs) == 1
    blob = (tmp_path / "copy0" / WEIGHTS_FILE).read_bytes()
    header = json.loads(blob[8:8 + int.from_bytes(blob[:8], "little")])
    assert list(header["__metadata__"]) == ["config_sha256", "format"]
    np.testing.assert_array_equal(load_adapter(tmp_path / "copy0", bb.manifest).flat, adapter.flat)


def test_peft_layout(trained):
    bb, adapter, folder = trained
    tensors = load_file(folder / WEIGHTS_FILE)
    assert tensors["fc0.input.lora_A.weight"].shape == (4, 10)      # (r, d_k)
    assert tensors["fc0.input.lora_B.weight"].shape == (3, 4)       # (C, r)
    assert tensors["bias"].shape == (3,) and len(tensors) == 7
    config = json.loads((folder / CONFIG_FILE).read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8.0 and config["peft_type"] == "SKIP_LORA"
    assert config["backbone_fingerprint"] == bb.identity and config["training"]["settings"]["epochs"] == 3
    assert list(config) == sorted(config)


def test_failed_save_leaves_the_old_adapter(trained, toy_data, monkeypatch):
    bb, adapter, folder = trained
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    newer, _ = finetune(bb, *toy_data, TrainConfig(epochs=5, batch_size=10))

    def disk_full(path, data):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr("edgelora.files.fileio.write_file", disk_full)
    with pytest.raises(OSError, match="No space"):
        newer.save(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in folder.parent.iterdir() if p.name.startswith(".")] == []
    load_adapter(folder, bb.manifest)


def test_save_replaces_an_existing_adapter(trained, toy_data):
    bb, adapter, folder = trained
    newer, _ = finetune(bb, *toy_data, TrainConfig(epochs=5, batch_size=10))
    newer.save(folder)
    np.testing.assert_array_equal(load_adapter(folder).flat, newer.flat)


def test_interrupted_swap_is_recovered(trained, monkeypatch):
    bb, adapter, folder = trained
    old = folder.with_name(f".{folder.name}.old")
    folder.rename(old)  # what a crash between the two renames of the fallback swap leaves
    np.testing.assert_array_equal(load_adapter(folder).flat, adapter.flat)


def test_error_adapter_from_another_backbone(trained, tmp_path):
    from tests.helpers import mlp_bundle, random_mlp
    _, _, folder = trained
    mlp_bundle(tmp_path / "other", random_mlp([10, 8, 8, 3], seed=9), ["a", "b", "c"])
    other = Backbone(tmp_path / "other")
    with pytest.raises(ValueError, match="belongs to another backbone: expected fingerprint sha256:"):
        load_adapter(folder, other.manifest)
    with pytest.raises(ValueError, match="another backbone"):
        Predictor(other, load_adapter(folder))


def test_error_truncated_weights(trained):
    _, _, folder = trained
    path = folder / WEIGHTS_FILE
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="adapter_model.safetensors is corrupt"):
        load_adapter(folder)


def test_error_corrupt_weights_without_checksum(trained):
    _, _, folder = trained
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["weights_sha256"] = ""
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    (folder / WEIGHTS_FILE).write_bytes(b"\xff" * 40)
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        load_adapter(folder)


def test_error_flipped_byte(trained):
    _, _, folder = trained
    raw = bytearray((folder / WEIGHTS_FILE).read_bytes())
    raw[-3] ^= 1
    (folder / WEIGHTS_FILE).write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="SHA-256 does not match"):
        load_adapter(folder)


def test_error_config_problems(trained):
    _, _, folder = trained
    path = folder / CONFIG_FILE
    good = json.loads(path.read_text())
    for change, message in [
        (lambda c: c.pop("r"), "missing field `r`"),
        (lambda c: c.update(format_version=7), "format_version 7 is newer"),
        (lambda c: c.update(r=0), "`r` should be a positive integer value but the value passed is 0"),
        (lambda c: c.update(tap_widths=[10, 8]), "one width per tap"),
        (lambda c: c.update(r="4"), "field `r`: expected an integer, found string"),
        (lambda c: c.update(extra=1), r"unknown field\(s\) \['extra'\]"),
    ]:
        bad = json.loads(json.dumps(good))
        change(bad)
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=message):
            load_adapter(folder)


def test_error_missing_files(trained, tmp_path):
    _, _, folder = trained
    with pytest.raises(FileNotFoundError, match="adapter not found"):
        load_adapter(tmp_path / "nothing")
    (folder / WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors is missing: the adapter in .* is incomplete"):
        load_adapter(folder)


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "f.json"
    fileio.atomic_write(path, b"old")
    monkeypatch.setattr(fileio.os, "replace", lambda a, b: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(OSError):
        fileio.atomic_write(path, b"new")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_error_adapter_with_other_taps(trained, toy_data):
    import dataclasses as dc
    from edgelora import Adapter, AdapterConfig
    from edgelora.core.lora import Layout
    bb, adapter, _ = trained
    c = adapter.config
    subset = dc.replace(c, target_taps=c.target_taps[1:], tap_widths=c.tap_widths[1:])
    flat = np.zeros(Layout(subset.target_taps, subset.tap_widths, 3, c.r, c.bias).size, np.float32)
    with pytest.raises(ValueError, match="expected taps .*'fc0.input': 10.*the backbone's, in order.*found"):
        Predictor(bb, Adapter(subset, flat))
    with pytest.raises(ValueError, match="`target_taps` should be unique"):
        AdapterConfig(**{**dc.asdict(c), "target_taps": ("a", "a", "b")})


def test_integer_alpha_and_numpy_scalars_save_and_load(trained, tmp_path):
    import dataclasses as dc
    bb, adapter, _ = trained
    adapter.config = dc.replace(adapter.config, lora_alpha=8, r=np.int64(4))
    assert type(adapter.config.lora_alpha) is float and type(adapter.config.r) is int
    adapter.save(tmp_path / "again")
    assert load_adapter(tmp_path / "again", bb.manifest).config.lora_alpha == 8.0


def test_error_saving_over_a_file_keeps_the_file(trained, tmp_path):
    _, adapter, _ = trained
    precious = tmp_path / "precious.npz"
    precious.write_bytes(b"user data")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        adapter.save(precious)
    assert precious.read_bytes() == b"user data" and sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
