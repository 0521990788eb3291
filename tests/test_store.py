"""The adapter store: names, immutable versions, the atomic current pointer, pin, rollback, delete, prune."""
import json
import os

import numpy as np
import pytest

from edgelora import Backbone, TrainConfig, finetune
from edgelora.files import fileio
from edgelora.ops.store import AdapterStore
from edgelora.ops.versions import check_name, parse_version


@pytest.fixture
def adapters(toy_bundle, toy_data):
    """Three different adapters of the toy backbone."""
    bb = Backbone(toy_bundle)
    return [finetune(bb, *toy_data, TrainConfig(epochs=2, batch_size=10, seed=s))[0] for s in range(3)]


@pytest.fixture
def store(tmp_path):
    return AdapterStore(tmp_path / "store")


def publish(store, name, adapter, parent=None):
    info = store.add_version(name, adapter, parent=parent, samples=10, metrics={"accuracy": 0.5})
    store.set_current(name, info.version)
    return info.version


def test_versions_current_and_info_round_trip(store, adapters, toy_bundle):
    assert store.names() == []
    v1 = publish(store, "user-1", adapters[0])
    v2 = publish(store, "user-1", adapters[1], parent=v1)
    assert (v1, v2) == (1, 2) and store.current("user-1") == 2 and store.names() == ["user-1"]
    info = store.info("user-1", 2)
    assert info.parent == 1 and info.samples == 10 and info.metrics == {"accuracy": 0.5} and info.created
    loaded = store.load("user-1", manifest=Backbone(toy_bundle).manifest)
    assert np.array_equal(loaded.flat, adapters[1].flat)
    assert np.array_equal(store.load("user-1", 1).flat, adapters[0].flat)
    summary = store.summary("user-1")
    assert summary["current"] == 2 and [v["version"] for v in summary["versions"]] == [1, 2]
    assert json.loads((store.adapter_dir("user-1") / "current.json").read_text())["version"] == 2


def test_adding_a_version_does_not_change_current(store, adapters):
    publish(store, "a", adapters[0])
    store.add_version("a", adapters[1], parent=1, samples=5, status="rejected", reason="worse")
    assert store.current("a") == 1 and store.info("a", 2).status == "rejected"


def test_rollback_to_parent_or_named_version(store, adapters):
    publish(store, "a", adapters[0])
    publish(store, "a", adapters[1], parent=1)
    publish(store, "a", adapters[2], parent=2)
    assert store.rollback("a") == 2 and store.current("a") == 2
    assert store.rollback("a") == 1
    with pytest.raises(ValueError, match="no parent"):
        store.rollback("a")
    assert store.rollback("a", to=3) == 3


def test_pin_protects_from_delete_and_prune(store, adapters):
    for i in range(5):
        publish(store, "a", adapters[i % 3], parent=i or None)
    store.pin("a", 1)
    with pytest.raises(ValueError, match="pinned"):
        store.delete("a", 1)
    gone = store.prune("a", keep=1)            # keeps newest (5 = current), its parent 4, pinned 1
    assert gone == [2, 3] and store.version_numbers("a") == [1, 4, 5]
    assert store.pin("a", 1, pinned=False) == []
    assert store.delete("a", 1) == [1]


def test_delete_refuses_current_unless_forced(store, adapters):
    publish(store, "a", adapters[0])
    publish(store, "a", adapters[1], parent=1)
    with pytest.raises(ValueError, match="current version"):
        store.delete("a", 2)
    assert store.delete("a", 1) == [1]
    with pytest.raises(ValueError, match="in use"):
        store.delete("a")
    assert store.delete("a", 2, force=True) == [2] and store.current("a") is None
    assert store.delete("a") == []
    assert store.names() == []


def test_error_bad_names_are_refused(store, adapters):
    for bad in ["", ".hidden", "..", "../x", "a/b", "a\\b", "x" * 65, "späť", "a b", "/abs"]:
        with pytest.raises(ValueError, match="not allowed"):
            check_name(bad)
        with pytest.raises(ValueError, match="not allowed"):
            store.add_version(bad, adapters[0], parent=None, samples=1)
    with pytest.raises(TypeError):
        check_name(3)
    assert check_name("Fan_3.site-2") == "Fan_3.site-2"


def test_error_symlinked_adapter_folder_is_refused(store, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", store.root / "adapters" / "evil")
    with pytest.raises(ValueError, match="link"):
        store.current("evil")


def test_error_missing_things_say_what_exists(store, adapters):
    with pytest.raises(FileNotFoundError, match="no adapter named 'nobody'"):
        store.current("nobody")
    publish(store, "a", adapters[0])
    with pytest.raises(FileNotFoundError, match=r"no version 7 \(versions: \[1\]\)"):
        store.load("a", 7)
    with pytest.raises(ValueError, match="version number"):
        parse_version("latest")
    assert parse_version("v12") == 12 == parse_version("12")


def test_error_corrupt_pointer_and_not_a_store(store, adapters, tmp_path):
    publish(store, "a", adapters[0])
    (store.adapter_dir("a") / "current.json").write_text('{"version": "one"}')
    with pytest.raises(ValueError, match="current.json"):
        store.current("a")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="not an adapter store"):
        AdapterStore(tmp_path / "other")
    with pytest.raises(FileNotFoundError):
        AdapterStore(tmp_path / "missing", create=False)


def test_interrupted_version_write_leaves_nothing_visible(store, adapters, monkeypatch):
    publish(store, "a", adapters[0])
    real = fileio.write_file

    def fail(path, data):
        if os.path.basename(path) == "version.json":
            raise OSError("disk full")
        real(path, data)
    monkeypatch.setattr(fileio, "write_file", fail)
    with pytest.raises(OSError, match="disk full"):
        store.add_version("a", adapters[1], parent=1, samples=3)
    monkeypatch.setattr(fileio, "write_file", real)
    assert store.version_numbers("a") == [1] and store.current("a") == 1
    assert store.add_version("a", adapters[1], parent=1, samples=3).version == 2
    assert not [p for p in (store.adapter_dir("a") / "versions").iterdir() if p.name.startswith(".")]


def test_lock_is_reentrant_and_exclusive_between_processes(store, adapters):
    import subprocess
    import sys
    with store.lock():
        publish(store, "a", adapters[0])            # writing methods take the lock again: no deadlock
        code = ("import sys; from edgelora.ops.store import AdapterStore; s = AdapterStore(sys.argv[1]);\n"
                "try:\n  s.lock(timeout=0.2).__enter__()\nexcept TimeoutError: sys.exit(3)")
        r = subprocess.run([sys.executable, "-c", code, str(store.root)], capture_output=True)
        assert r.returncode == 3, r.stderr.decode()


def test_an_edited_version_record_is_found_and_named_and_one_written_without_checksum_is_read(store, adapters):
    publish(store, "a", adapters[0])
    store.add_version("a", adapters[1], parent=1, samples=3, status="rejected", reason="worse on the holdout")
    path = store.version_dir("a", 2) / "version.json"
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, "status": "accepted"}))          # the gate's decision edited by hand
    with pytest.raises(ValueError, match=r"v0002/version\.json is corrupt or was edited.*store delete"):
        store.info("a", 2)
    with pytest.raises(ValueError, match=r"v0002/version\.json"):
        store.set_current("a", 2)                                       # never served
    assert store.delete("a", 2) == [2]                                  # but it can be deleted
    # stores written before version.json carried a checksum: those records are read as they are
    old = store.version_dir("a", 1) / "version.json"
    record = {k: v for k, v in json.loads(old.read_text()).items() if k != "checksum"}
    old.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    assert store.info("a", 1).metrics == {"accuracy": 0.5} and store.load("a").config.r == adapters[0].config.r


def test_adding_a_version_removes_dead_writers_temps_and_keeps_a_live_writers(store, adapters):
    import subprocess
    import sys
    publish(store, "a", adapters[0])
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    versions = store.adapter_dir("a") / "versions"
    live = f".v0002.tmp-{os.getpid()}-89abcdef"       # another thread of a live writer, building v0002
    for name in (f".v0002.tmp-{ended.pid}-0123abcd", live, ".v0001.deleted-00ff00ff"):
        (versions / name).mkdir()
    store.add_version("a", adapters[1], parent=1, samples=3)
    assert sorted(p.name for p in versions.iterdir()) == [live, "v0001", "v0002"]


def test_error_delete_never_follows_a_symlinked_versions_folder_out_of_the_store(store, adapters, tmp_path):
    """`store delete STORE NAME --version 1` deleted v0001 in the folder a `versions` link pointed to."""
    publish(store, "a", adapters[0])
    store.add_version("a", adapters[1], parent=1, samples=3)
    outside = tmp_path / "outside"
    (store.adapter_dir("a") / "versions").rename(outside)
    os.symlink(outside, store.adapter_dir("a") / "versions")
    for act in (lambda: store.delete("a", 1, force=True), lambda: store.prune("a", 1),
                lambda: store.add_version("a", adapters[2], parent=1, samples=3)):
        with pytest.raises(ValueError, match="symbolic link"):
            act()
    assert sorted(p.name for p in outside.iterdir()) == ["v0001", "v0002"]


@pytest.mark.parametrize("record", ["current.json", "pins.json"])
def test_error_a_flipped_store_record_is_refused_and_named(store, adapters, record):
    """After a rollback `2`->`3` in current.json silently served v3; pins.json silently unpinned."""
    for i in range(3):
        publish(store, "a", adapters[i], parent=i or None)
    store.rollback("a", 2)
    store.pin("a", 2)
    path = store.adapter_dir("a", record)
    text = path.read_text()
    key = '"version": ' if record == "current.json" else '"pins": [\n    '
    flipped = text.replace(key + "2", key + "3")
    assert flipped != text
    path.write_text(flipped)
    with pytest.raises(ValueError, match=f"{record} is corrupt or was edited"):
        store.current("a") if record == "current.json" else store.pins("a")


def test_every_single_byte_change_of_a_store_record_is_refused(store, adapters):
    publish(store, "a", adapters[0])
    publish(store, "a", adapters[1], parent=1)
    store.pin("a", 1)
    for record, read in (("current.json", store.current), ("pins.json", store.pins)):
        path = store.adapter_dir("a", record)
        good = path.read_bytes()
        expected = read("a")
        for i in range(len(good)):
            for bit in (0x01, 0x20):
                path.write_bytes(good[:i] + bytes([good[i] ^ bit]) + good[i + 1:])
                try:
                    assert read("a") == expected, (record, i, bit)   # whitespace or case in a name only
                except ValueError:
                    pass
        path.write_bytes(good)


def test_store_records_written_before_the_checksum_are_read(store, adapters):
    publish(store, "a", adapters[0])
    store.adapter_dir("a", "current.json").write_text('{"version": 1}\n')
    store.adapter_dir("a", "pins.json").write_text('[1]\n')
    assert store.current("a") == 1 and store.pins("a") == [1]
