"""Checkpoints: constant cost per epoch (an append-only history), crash tails ignored, corruption named."""
import json

import numpy as np
import pytest

from edgelora import Backbone, TrainConfig, finetune
from edgelora.files import fileio
from edgelora.files.checkpoint import HISTORY_FILE, META_FILE, load_checkpoint

FAST = TrainConfig(epochs=40, batch_size=10, lr=1e-2)


def test_checkpoint_bytes_written_per_epoch_do_not_grow(toy_bundle, toy_data, tmp_path, monkeypatch):
    written, real = [], fileio.write_file

    def counting(path, data):
        written.append(len(data))
        real(path, data)
    monkeypatch.setattr(fileio, "write_file", counting)
    monkeypatch.setattr("edgelora.files.checkpoint.write_file", counting, raising=False)
    per_epoch = []

    def mark(_):
        per_epoch.append(sum(written))
        written.clear()
    finetune(Backbone(toy_bundle), *toy_data, FAST, checkpoint_dir=tmp_path / "ckpt", callback=mark,
             checkpoint_every=("epochs", 1))
    per_epoch.append(sum(written))
    saves = per_epoch[2:]  # what each epoch's save wrote (the first save writes the folder afresh)
    assert len(saves) == FAST.epochs - 1 and max(saves) < 1.05 * min(saves), saves
    meta, _ = load_checkpoint(tmp_path / "ckpt")
    assert len(meta["runs"][0]["epochs"]) == FAST.epochs
    assert len((tmp_path / "ckpt" / META_FILE).read_bytes()) < 4096  # no per-epoch records in the state


def test_a_crashed_append_leaves_a_tail_that_is_ignored(toy_bundle, toy_data, tmp_path):
    bb = Backbone(toy_bundle)
    cfg = TrainConfig(epochs=6, batch_size=10, lr=1e-2)
    reference, _ = finetune(bb, *toy_data, cfg)

    def interrupt(rec):
        if rec["epoch"] == 3:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        finetune(bb, *toy_data, cfg, checkpoint_dir=tmp_path / "ckpt", callback=interrupt,
                 checkpoint_every=("epochs", 1))
    with open(tmp_path / "ckpt" / HISTORY_FILE, "ab") as f:  # an append that never got committed
        f.write(b'{"run": 0, "record": {"epoch": 99')
    meta, _ = load_checkpoint(tmp_path / "ckpt")
    assert [e["epoch"] for e in meta["runs"][0]["epochs"]] == [1, 2]
    resumed, h = finetune(bb, *toy_data, cfg, checkpoint_dir=tmp_path / "ckpt", resume=True)
    assert np.array_equal(resumed.flat, reference.flat) and [e["epoch"] for e in h.epochs] == list(range(1, 7))
    assert [json.loads(line)["record"]["epoch"] for line in
            (tmp_path / "ckpt" / HISTORY_FILE).read_bytes().splitlines()] == list(range(1, 7))


def test_error_a_changed_history_line_is_named(toy_bundle, toy_data, tmp_path):
    finetune(Backbone(toy_bundle), *toy_data, TrainConfig(epochs=3, batch_size=10), checkpoint_dir=tmp_path / "ckpt")
    path = tmp_path / "ckpt" / HISTORY_FILE
    path.write_bytes(path.read_bytes().replace(b'"epoch": 2', b'"epoch": 7'))
    with pytest.raises(ValueError, match=f"{HISTORY_FILE} is truncated or corrupt"):
        load_checkpoint(tmp_path / "ckpt")


def test_error_a_checkpoint_of_the_old_format_says_what_to_do(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / META_FILE).write_text('{"format_version": 1, "run_key": "x", "runs": []}')
    with pytest.raises(ValueError, match=r"checkpoint.json: format_version 1 is older than this edgelora reads \(2\); delete"):
        load_checkpoint(tmp_path / "ckpt")


def test_pacer_saves_every_n_epochs_or_seconds_and_always_at_the_end():
    from edgelora.files.checkpoint import Pacer, parse_every
    saved = []
    pace = Pacer(parse_every("3"))
    for epoch in range(1, 8):
        pace(lambda e=epoch: saved.append(e), finished=epoch == 7)
    assert saved == [3, 6, 7]
    assert parse_every("30s") == ("seconds", 30.0) and parse_every("auto") is None
    for bad in ("0", "-2", "x", "1.5"):
        with pytest.raises(ValueError, match="expected a number of epochs"):
            parse_every(bad)


def test_pacer_by_default_spends_at_most_about_a_tenth_of_the_run_saving():
    """A save every epoch turned a 1.2 s fine-tune into 28 s; by default saving now costs <= ~10 %."""
    import time
    from edgelora.files.checkpoint import Pacer
    pace, start, saving = Pacer(), time.perf_counter(), [0.0]

    def save():
        t = time.perf_counter()
        time.sleep(0.02)                                  # a slow disk: each save costs 20 epochs' work
        saving[0] += time.perf_counter() - t
    for epoch in range(400):
        time.sleep(0.002)                                 # one epoch of training
        pace(save, finished=epoch == 399)
    total = time.perf_counter() - start
    assert saving[0] / total <= 0.2, (saving[0], total)   # every epoch: 0.02 / 0.022, over 90 %
