"""The shared file rules: one digest helper, one format-version policy, one checked-folder primitive,
and every format (bundle, adapter, checkpoint, samples, store, cache, kit) going through them."""
import hashlib
import json
import warnings

import numpy as np
import pytest

from edgelora import AdapterStore, Backbone, SkipCache, TrainConfig, finetune, load_adapter
from edgelora.files.bundle import MANIFEST_FILE
from edgelora.files.checked import CheckedFolder
from edgelora.files.checkpoint import META_FILE, load_checkpoint
from edgelora.files.fileio import dumps_json
from edgelora.files.formats import NewerFormatError, check_version, digest
from edgelora.ops.samples import SESSIONS_FILE, Samples

FOLDER = CheckedFolder("thing", "doc.json", {"a.bin": "a_sha256", "b.bin": "b_sha256"}, 2, oldest=2,
                       remedy="rebuild {folder}")


def test_digest_forms_and_sources(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    hexed = hashlib.sha256(b"abc").hexdigest()
    assert digest(b"abc") == hexed == digest(tmp_path / "f")
    assert digest(b"abc", tagged=True) == "sha256:" + hexed == digest(tmp_path / "f", tagged=True)
    assert digest([b"a", memoryview(b"bc")]) == hexed          # buffers hashed in turn, as one stream
    with pytest.raises(TypeError, match="expected bytes, a path object or buffers, found str"):
        digest(str(tmp_path / "f"))


@pytest.mark.parametrize("data,error,message", [
    ({"format_version": 3}, NewerFormatError, r"f.json: format_version 3 is newer than this edgelora supports "
                                              r"\(1 to 2\); upgrade edgelora"),
    ({"format_version": 0}, ValueError, r"f.json: format_version 0 is older than this edgelora reads \(1 to 2\); "
                                        r"delete it"),
    ({"format_version": True}, ValueError, "f.json: field `format_version`: expected an integer, found boolean"),
    ({"format_version": "2"}, ValueError, "expected an integer, found string"),
    ({}, ValueError, "f.json: missing field `format_version`"),
    ([2], ValueError, "f.json: expected a JSON object, found list"),
])
def test_error_version_policy(data, error, message):
    with pytest.raises(error, match=message):
        check_version(data, 2, "f.json", older="delete it")


def test_version_policy_accepts_its_range():
    assert [check_version({"format_version": v}, 2, "f.json") for v in (1, 2)] == [1, 2]


def test_checked_folder_round_trip_and_every_damage_named(tmp_path):
    folder = tmp_path / "t"
    doc = FOLDER.write(folder, {"format_version": 2, "x": 1}, {"a.bin": b"alpha", "b.bin": b"beta"},
                       extra={"notes.txt": b"unchecked"})
    assert doc == {"format_version": 2, "x": 1, "a_sha256": digest(b"alpha"), "b_sha256": digest(b"beta")}
    assert sorted(p.name for p in folder.iterdir()) == ["a.bin", "b.bin", "doc.json", "notes.txt"]
    path, read = FOLDER.read_document(folder)
    assert read == doc and FOLDER.read_binary(folder, read, "b.bin") == b"beta"
    FOLDER.check_vouched(folder, read, FOLDER.document_digest({"format_version": 2, "x": 1}), "a.bin")
    with pytest.raises(ValueError, match="doc.json is corrupt or was edited: it does not match the checksum "
                                         "recorded in a.bin; rebuild .*t$"):
        FOLDER.check_vouched(folder, {**read, "x": 2}, FOLDER.document_digest(read), "a.bin")
    (folder / "b.bin").write_bytes(b"bets")
    with pytest.raises(ValueError, match=r"b.bin is corrupt: its SHA-256 does not match the one recorded in doc.json"):
        FOLDER.read_binary(folder, read, "b.bin")
    (folder / "a.bin").unlink()
    with pytest.raises(FileNotFoundError, match="a.bin is missing: the thing in .* is incomplete; rebuild"):
        FOLDER.read_binary(folder, read, "a.bin")
    (folder / "doc.json").write_text(json.dumps({**doc, "format_version": 1}))
    with pytest.raises(ValueError, match=r"doc.json: format_version 1 is older than this edgelora reads \(2\); rebuild"):
        FOLDER.read_document(folder)
    with pytest.raises(FileNotFoundError, match="thing not found: expected a folder with doc.json and a.bin and b.bin"):
        FOLDER.read_document(tmp_path / "nothing")


def test_an_optional_digest_may_be_empty_but_not_wrong(tmp_path):
    loose = CheckedFolder("thing", "doc.json", {"a.bin": "a_sha256"}, 1, optional=True)
    loose.write(tmp_path / "t", {"format_version": 1}, {"a.bin": b"alpha"})
    assert loose.read_binary(tmp_path / "t", {"a_sha256": ""}, "a.bin") == b"alpha"
    loose.check_vouched(tmp_path / "t", {}, None, "a.bin")
    with pytest.raises(ValueError, match="a.bin is corrupt"):
        loose.read_binary(tmp_path / "t", {"a_sha256": digest(b"other")}, "a.bin")


def edit(path, **fields):
    """Change fields of a JSON file (a cache meta's `checksum` is recomputed, as its writer would)."""
    data = json.loads(path.read_text())
    data.update(fields)
    if "checksum" in data and path.name == "meta.json":
        data.pop("checksum")
        data["checksum"] = digest(dumps_json(data), tagged=True)
    path.write_text(json.dumps(data))


def test_every_format_refuses_a_newer_version_naming_file_and_versions(toy_bundle, toy_data, tmp_path):
    bb = Backbone(toy_bundle)
    adapter, _ = finetune(bb, *toy_data, TrainConfig(epochs=2, batch_size=10), checkpoint_dir=tmp_path / "ckpt")
    adapter.save(tmp_path / "adapter")
    store = AdapterStore(tmp_path / "store")
    Samples.empty().append({"x": toy_data[0][:3]}, toy_data[1][:3], [bytes(16)] * 3, 1, np.zeros(3, bool)) \
        .save(tmp_path / "data", {"session": 1})
    SkipCache(bb, tmp_path / "cache").rows(toy_data[0][:5])
    cache_meta = next((tmp_path / "cache").glob("*/meta.json"))
    cases = [(toy_bundle / MANIFEST_FILE, lambda: Backbone(toy_bundle)),
             (tmp_path / "adapter" / "adapter_config.json", lambda: load_adapter(tmp_path / "adapter")),
             (tmp_path / "ckpt" / META_FILE, lambda: load_checkpoint(tmp_path / "ckpt")),
             (tmp_path / "data" / SESSIONS_FILE, lambda: Samples.load(tmp_path / "data", bb.manifest)),
             (store.root / "store.json", lambda: AdapterStore(store.root)),
             (cache_meta, lambda: SkipCache(bb, tmp_path / "cache"))]
    for path, load in cases:
        edit(path, format_version=99)
        with pytest.raises(NewerFormatError, match=f"{path.name}: format_version 99 is newer than this edgelora "
                                                   r"supports \(\d( to \d)?\); upgrade edgelora"):
            load()
    assert cache_meta.exists()  # a newer cache is refused, not rebuilt over


def test_an_older_cache_is_rebuilt_without_a_warning(toy_bundle, toy_data, tmp_path):
    bb = Backbone(toy_bundle)
    SkipCache(bb, tmp_path / "cache").rows(toy_data[0][:5])
    meta = next((tmp_path / "cache").glob("*/meta.json"))
    data = json.loads(meta.read_text())
    data.pop("checksum")
    meta.write_text(json.dumps({**data, "format_version": 1}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(SkipCache(bb, tmp_path / "cache")) == 0
