"""What a new user hit: interrupts, stored adapters by name, pipes, wrong paths, help texts."""
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgelora import AdapterStore, Backbone, TrainConfig, finetune, load_adapter
from edgelora.cli import main

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--epochs", "6", "--batch-size", "10", "--weight-decay", "0.1"]


@pytest.fixture
def files(toy_bundle, toy_data, tmp_path):
    x, y = toy_data
    np.savez(tmp_path / "train.npz", x=x, y=y)
    return toy_bundle, tmp_path


def test_sigterm_says_the_adapter_is_intact_and_how_to_resume(files, capsys, monkeypatch):
    bundle, d = files
    args = ["finetune", str(bundle), "--data", str(d / "train.npz"), "--out", str(d / "ad"), "--quiet", *FAST]
    assert main(args + ["--out", str(d / "reference")]) == 0
    assert main(args) == 0
    before = {p.name: p.read_bytes() for p in (d / "ad").iterdir()}
    import edgelora.runtime.train
    real = edgelora.runtime.train.save_checkpoint

    def save_then_terminate(folder, meta, arrays):
        real(folder, meta, arrays)
        if len(meta["runs"][-1]["epochs"]) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # what `kill PID` or systemd sends
    monkeypatch.setattr(edgelora.runtime.train, "save_checkpoint", save_then_terminate)
    capsys.readouterr()

    def unhandled(signum, frame):  # what pytest would see if the command did not handle SIGTERM itself
        raise RuntimeError("SIGTERM reached the test's own handler")
    previous = signal.signal(signal.SIGTERM, unhandled)
    try:
        code = main(args + ["--seed", "0", "--checkpoint-dir", str(d / "ck"), "--checkpoint-every", "1"])
        assert signal.getsignal(signal.SIGTERM) is unhandled  # the command's handler is removed again
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert code == 143
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("edgelora finetune: interrupted by SIGTERM; nothing was "
                                                         f"saved to {d / 'ad'}"), err
    assert {p.name: p.read_bytes() for p in (d / "ad").iterdir()} == before  # the previous adapter is intact
    assert f"{d / 'ck'} holds the last finished epoch" in err
    command = shlex.split(err.split("continue with: ")[1])
    assert command[0] == "edgelora" and command[-1] == "--resume"
    monkeypatch.setattr(edgelora.runtime.train, "save_checkpoint", real)
    assert main(command[1:]) == 0
    assert np.array_equal(load_adapter(d / "ad").flat, load_adapter(d / "reference").flat)


def test_ctrl_c_before_the_first_checkpoint_says_so_and_resume_says_it_starts_over(files, capsys, monkeypatch):
    """Ctrl-C during cross-validation said "continue from the last finished epoch" though no checkpoint
    existed, and --resume then silently started over."""
    bundle, d = files

    def interrupt(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr("edgelora.runtime.train.plan", interrupt)   # inside cross-validation
    args = ["finetune", str(bundle), "--data", str(d / "train.npz"), "--out", str(d / "ad"), *FAST,
            "--checkpoint-dir", str(d / "ck")]
    assert main(args) == 130
    err = capsys.readouterr().err.strip()
    assert "continue" not in err and f"no epoch had finished, so {d / 'ck'} holds no checkpoint" in err, err
    monkeypatch.undo()
    assert main(args + ["--resume"]) == 0
    err = capsys.readouterr().err
    assert f"--resume: {d / 'ck'} holds no checkpoint" in err and "starting from the beginning" in err


def test_ctrl_c_without_a_checkpoint_says_how_to_make_runs_resumable(files, capsys, monkeypatch):
    bundle, d = files

    def interrupt(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr("edgelora.cli.finetune.finetune_features", interrupt)
    assert main(["finetune", str(bundle), "--data", str(d / "train.npz"), "--out", str(d / "ad"), *FAST]) == 130
    err = capsys.readouterr().err.strip()
    assert err == (f"edgelora finetune: interrupted by Ctrl-C; nothing was saved to {d / 'ad'} (what was there, if "
                   f"anything, is intact); with --checkpoint-dir DIR a run can be resumed")


@pytest.fixture
def store(toy_bundle, toy_data, tmp_path):
    """A store with adapter `user-1`: v1 (current) and v2 (trained longer)."""
    bb = Backbone(toy_bundle)
    s = AdapterStore(tmp_path / "store")
    for epochs in (1, 20):
        adapter, _ = finetune(bb, *toy_data, TrainConfig(epochs=epochs, batch_size=10, lr=0.05))
        s.add_version("user-1", adapter, parent=None, samples=120)
    s.set_current("user-1", 1)
    return tmp_path / "store"


def test_a_stored_adapter_is_named_as_store_slash_name_at_version(files, store, capsys):
    bundle, d = files
    base = ["eval", str(bundle), "--data", str(d / "train.npz"), "--json", "--adapter"]
    current = run_json(capsys, *base, f"{store}/user-1")
    v1, v2 = run_json(capsys, *base, f"{store}/user-1@v1"), run_json(capsys, *base, f"{store}/user-1@2")
    assert current["loss"] == v1["loss"] != v2["loss"]
    shown = run_json(capsys, "store", "show", str(store), "user-1", "--json")
    paths = [v["path"] for v in shown["versions"]]
    assert shown["path"] == paths[0] and run_json(capsys, *base, paths[1])["loss"] == v2["loss"]
    assert main(["store", "show", str(store), "user-1"]) == 0 and paths[1] in capsys.readouterr().out
    out = d / "p.npy"
    assert main(["predict", str(bundle), "--adapter", f"{store}/user-1@v2", "--data", str(d / "train.npz"),
                 "--out", str(out), "--quiet"]) == 0
    assert main(["merge", str(bundle), f"{store}/user-1", "--out", str(d / "m.onnx"), "--quiet"]) == 0
    for spec, message in ((f"{store}/nobody", "has no adapter 'nobody' (adapters: ['user-1'])"),
                          (f"{store}/user-1@v9", "adapter 'user-1' has no version 9 (versions: [1, 2])")):
        assert main(base[:-1] + ["--adapter", spec]) == 2
        assert message in capsys.readouterr().err


def run_json(capsys, *args):
    assert main(list(args)) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_output_into_a_closed_pipe_exits_quietly(toy_bundle, tmp_path):
    p = subprocess.Popen([sys.executable, "-m", "edgelora.cli", "store", "--help"], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # like `| head -1` that has already exited
    err = p.stderr.read().decode()
    p.wait(timeout=60)
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    store = AdapterStore(tmp_path / "store")
    store.add_version("a", finetune(Backbone(toy_bundle), np.zeros((20, 10), np.float32), np.arange(20) % 3,
                                    TrainConfig(epochs=1, batch_size=10))[0], parent=None, samples=20)
    p = subprocess.Popen([sys.executable, "-m", "edgelora.cli", "store", "show", str(tmp_path / "store"), "a"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 141 and err == "", err


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (a device that is always full)")
def test_error_output_to_a_full_disk_is_one_line_and_exit_1_not_a_silent_success(toy_bundle, tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((6, 10), np.float32), y=np.arange(6) % 3)
    with open("/dev/full", "w") as full:
        p = subprocess.run([sys.executable, "-m", "edgelora.cli", "eval", str(toy_bundle), "--data",
                            str(tmp_path / "d.npz"), "--json"], cwd=ROOT, stdout=full, stderr=subprocess.PIPE,
                           text=True, timeout=120)
    assert p.returncode == 1 and p.stderr.strip().splitlines() == [
        "edgelora: error: could not write the output to stdout: No space left on device"], p.stderr


def test_error_an_onnx_file_given_as_bundle_hints_at_export(toy_bundle, tmp_path, capsys):
    model = tmp_path / "model.onnx"
    model.write_bytes((toy_bundle / "backbone.onnx").read_bytes())
    np.save(tmp_path / "x.npy", np.zeros((2, 10), np.float32))
    assert main(["predict", str(model), "--data", str(tmp_path / "x.npy"), "--out", str(tmp_path / "p.npy")]) == 2
    assert f"make a bundle from it with: edgelora export {model} --out BUNDLE" in capsys.readouterr().err


def test_cache_info_counts_only_caches(files, capsys):
    bundle, d = files
    assert main(["finetune", str(bundle), "--data", str(d / "train.npz"), "--out", str(d / "ad"), "--quiet",
                 "--cache-dir", str(d / "cache"), *FAST]) == 0
    (d / "cache" / "old_notes").mkdir()
    (d / "cache" / "0123456789abcdef-float32").mkdir()  # a cache's name, but no cache in it
    info = run_json(capsys, "cache", "info", str(bundle), "--cache-dir", str(d / "cache"), "--json")
    assert info["other_backbones"] == [] and info["caches"][0]["rows"] == 120


@pytest.mark.parametrize("command", ["eval", "predict", "merge", "export", "cache", "store", "personalize", "demo"])
def test_verbose_help_mentions_epochs_only_where_there_are_epochs(command, capsys):
    assert main([command, "--help"]) == 0
    assert "every epoch" not in capsys.readouterr().out
    assert main(["finetune", "--help"]) == 0 and "log every epoch" in capsys.readouterr().out


def test_cv_rows_per_class_limits_the_cross_validated_samples(files, capsys):
    bundle, d = files
    r = run_json(capsys, "finetune", str(bundle), "--data", str(d / "train.npz"), "--out", str(d / "ad"), *FAST,
                 "--cv-rows-per-class", "10", "--json")              # 3 classes: 30 of the 120 samples
    assert "on 30 of 120 samples" in r["cross_validation"]["method"] and r["settings"]["cv_rows_per_class"] == 10
    assert r["samples"] == {"train": 120, "val": 0}                  # the refit still trains on every sample
    assert main(["finetune", str(bundle), "--data", str(d / "train.npz"), "--out", str(d / "ad2"),
                 "--cv-rows-per-class", "-1"]) == 2
    assert "expected 0 or a positive integer, found '-1'" in capsys.readouterr().err and not (d / "ad2").exists()


def test_ctrl_c_while_starting_prints_one_line(monkeypatch, capsys):
    """Ctrl-C while Python imported numpy and onnxruntime printed a traceback."""
    def interrupt(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr("edgelora.cli.build_parser", interrupt)
    assert main(["finetune", "b", "--data", "d.npz"]) == 130
    err = capsys.readouterr().err
    assert err == "edgelora finetune: interrupted by Ctrl-C while starting; nothing was read or written\n", err
