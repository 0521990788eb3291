"""Destructive-path catalogue: every command that writes, pointed at what is not its own, changes nothing.

Each writer is pointed at a folder of unrelated files, at a file, at `.`, at the bundle and at the data
file: it must exit 2 with one line on stderr, and a hash of the whole tree must not change.
"""
import hashlib
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgelora import AdapterStore, Backbone, TrainConfig, finetune
from edgelora.files.bundle import load_manifest, read_model, write_bundle
from edgelora.cli import main
from edgelora.cli.demo import _save_data

DEMO = Path(__file__).resolve().parent.parent / "edgelora" / "data" / "demo_bundle"
TARGETS = ("notes", "readme.txt", ".", "bundle", "data.npz")   # foreign folder, a file, here, the bundle, the data

WRITERS = {  # command line with {T} for the target; everything else valid
    "finetune --out": ["finetune", "bundle", "--data", "data.npz", "--out", "{T}", "--epochs", "1"],
    "finetune --checkpoint-dir": ["finetune", "bundle", "--data", "data.npz", "--out", "new_ad", "--epochs", "1",
                                  "--checkpoint-dir", "{T}"],
    "finetune --cache-dir": ["finetune", "bundle", "--data", "data.npz", "--out", "new_ad", "--epochs", "1",
                             "--cache-dir", "{T}"],
    "export --out": ["export", "model.onnx", "--out", "{T}"],
    "merge --out": ["merge", "bundle", "adapter", "--out", "{T}"],
    "merge --format onnx_adapter --out": ["merge", "bundle", "adapter", "--format", "onnx_adapter", "--out", "{T}"],
    "merge --format lora_model --out": ["merge", "bundle", "--format", "lora_model", "--out", "{T}"],
    "predict --out": ["predict", "bundle", "--adapter", "adapter", "--data", "data.npz", "--out", "{T}"],
    "demo --save-data": ["demo", "--no-plot", "--save-data", "{T}"],
    "demo --png": ["demo", "--png", "{T}"],
    "personalize STORE": ["personalize", "{T}", "user-1", "--bundle", "bundle", "--data", "data.npz"],
    "cache clear --cache-dir": ["cache", "clear", "bundle", "--cache-dir", "{T}"],
    "store delete STORE": ["store", "delete", "{T}", "user-1", "--force"],
    "store rollback STORE": ["store", "rollback", "{T}", "user-1"],
}


def tree_hash(root: Path) -> str:
    """SHA-256 over every path (files, folders, links, hidden ones too) and every file's bytes."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = Path(dirpath, name)
            h.update(str(p.relative_to(root)).encode() + b"\0")
            if p.is_file() and not p.is_symlink():
                h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def user_tree(tmp_path_factory):
    """A user's folder: the demo bundle, labelled data, an adapter, an ONNX model and unrelated files."""
    root = tmp_path_factory.mktemp("user")
    bundle = root / "bundle"
    shutil.copytree(DEMO, bundle)
    rng = np.random.default_rng(0)
    x = rng.random((60, 64), dtype=np.float32) * 16
    y = np.arange(60) % 10
    buf = io.BytesIO()
    np.savez(buf, x=x, y=y)
    (root / "data.npz").write_bytes(buf.getvalue())
    adapter, _ = finetune(Backbone(bundle), x, y, TrainConfig(epochs=1, batch_size=10))
    adapter.save(root / "adapter")
    (root / "model.onnx").write_bytes(read_model(bundle, load_manifest(bundle)))
    (root / "notes" / "sub").mkdir(parents=True)
    (root / "notes" / "notes.txt").write_text("my notes")
    (root / "notes" / "sub" / "photo.jpg").write_bytes(b"\xff\xd8 not really")
    (root / "readme.txt").write_text("keep me")
    return root


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_writer_pointed_at_what_is_not_its_own_changes_nothing(user_tree, monkeypatch, capsys, writer, target):
    monkeypatch.chdir(user_tree)
    before = tree_hash(user_tree)
    code = main([a.replace("{T}", target) for a in WRITERS[writer]])
    err = capsys.readouterr().err
    assert code == 2, (writer, target, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert tree_hash(user_tree) == before, (writer, target, err)


@pytest.mark.parametrize("args", [
    ["finetune", "bundle", "--data", "data.npz", "--out", "bundle", "--overwrite"],
    ["finetune", "bundle", "--data", "data.npz", "--out", "data.npz", "--overwrite"],
    ["finetune", "bundle", "--data", "data.npz", "--out", ".", "--overwrite"],
    ["finetune", "bundle", "--data", "data.npz", "--out", "new_ad", "--cache-dir", "bundle", "--overwrite"],
    ["export", "model.onnx", "--out", ".", "--overwrite"],
    ["merge", "bundle", "adapter", "--out", "bundle/backbone.onnx", "--overwrite"],
    ["predict", "bundle", "--data", "data.npz", "--out", "notes", "--overwrite"],
])
def test_overwrite_never_touches_inputs_the_current_folder_or_a_folder_for_a_file(user_tree, monkeypatch, capsys,
                                                                                 args):
    monkeypatch.chdir(user_tree)
    before = tree_hash(user_tree)
    assert main(args) == 2
    assert tree_hash(user_tree) == before and len(capsys.readouterr().err.strip().splitlines()) == 1


def test_overwrite_from_inside_the_target_is_refused(user_tree, monkeypatch, capsys):
    monkeypatch.chdir(user_tree / "notes")
    before = tree_hash(user_tree)
    assert main(["finetune", "../bundle", "--data", "../data.npz", "--out", ".", "--overwrite"]) == 2
    assert "is the current folder" in capsys.readouterr().err and tree_hash(user_tree) == before


def test_overwrite_replaces_a_foreign_folder_and_an_adapter_is_replaced_without_it(user_tree, tmp_path, capsys):
    foreign = tmp_path / "foreign"
    (foreign / "sub").mkdir(parents=True)
    (foreign / "a.txt").write_text("x")
    args = ["finetune", str(user_tree / "bundle"), "--data", str(user_tree / "data.npz"), "--epochs", "1",
            "--batch-size", "10", "--quiet", "--out", str(foreign)]
    assert main(args) == 2 and "refusing to replace it" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    assert sorted(p.name for p in foreign.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert main(args) == 0  # now an adapter: replaced in place, no flag needed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign"]  # no temp folders left behind


def test_python_api_refuses_the_same_way(user_tree, tmp_path):
    from edgelora import load_adapter
    adapter = load_adapter(user_tree / "adapter")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    with pytest.raises(ValueError, match=r"mine holds 1 entry \('thesis.tex'\), not an adapter folder"):
        adapter.save(tmp_path / "mine")
    manifest = load_manifest(user_tree / "bundle")
    with pytest.raises(ValueError, match="not a bundle folder"):
        write_bundle(tmp_path / "mine", read_model(user_tree / "bundle", manifest), manifest)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "years of work"
    adapter.save(tmp_path / "mine", overwrite=True)
    assert load_adapter(tmp_path / "mine").config == adapter.config
    (tmp_path / "store_here").mkdir()
    (tmp_path / "store_here" / "x").write_text("x")
    with pytest.raises(ValueError, match="not an adapter store; refusing to use it"):
        AdapterStore(tmp_path / "store_here")


def test_demo_save_data_replaces_only_what_it_wrote(tmp_path):
    rng = np.random.default_rng(0)
    data = {k: (rng.random((5, 64), dtype=np.float32), np.arange(5)) for k in ("finetune", "test")}
    folder = tmp_path / "demo_files"
    _save_data(folder, data)
    (folder / "adapter").mkdir()  # what the quick start adds later
    (folder / "adapter" / "adapter_config.json").write_text("{}")
    _save_data(folder, data)  # again: the bundle and the two files are replaced, the rest is left alone
    assert sorted(p.name for p in folder.iterdir()) == ["adapter", "bundle", "finetune.npz", "test.npz"]
    assert (folder / "adapter" / "adapter_config.json").read_text() == "{}"
    (folder / "test.npz").write_text("a user's file, not ours")
    with pytest.raises(ValueError, match="test.npz holds a file of 23 bytes, not a demo data file"):
        _save_data(folder, data)


def test_benchmarks_delete_only_their_own_output(tmp_path):
    from edgelora.ops.store import STORE_KIND
    from edgelora.files.outputs import remove_own
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "holiday.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(ValueError, match="refusing to delete it"):
        remove_own(tmp_path / "store", STORE_KIND)  # `python -m device_bench.serving --out ~` with a ~/store
    assert (tmp_path / "store" / "holiday.jpg").exists()
    AdapterStore(tmp_path / "ours")
    remove_own(tmp_path / "ours", STORE_KIND)
    remove_own(tmp_path / "never_existed", STORE_KIND)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def _files_under_home(tmp_path, env_extra: dict) -> list[str]:
    """The files a fresh process importing edgelora and running the demo backbone leaves under a fresh HOME."""
    import subprocess
    import sys
    home = tmp_path / f"home{len(env_extra)}"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME")}
    env.update(HOME=str(home), **env_extra)
    code = ("import numpy as np, edgelora; from edgelora import Backbone; "
            f"Backbone({str(DEMO)!r}).features(np.zeros((2, 64), np.float32))")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    return sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file())


def test_nothing_is_written_outside_edgelora_folders_not_even_onnxruntime_telemetry(tmp_path):
    control = _files_under_home(tmp_path, {"ORT_DISABLE_TELEMETRY": "0"})   # onnxruntime's own default
    if not control:
        pytest.skip("this onnxruntime writes no telemetry file under HOME")
    assert _files_under_home(tmp_path, {}) == [], "edgelora left files under HOME"
