"""runtime/cv_checkpoint.py: an interrupted fine-tune resumes without cross-validating again, and says so."""
import numpy as np
import pytest

from edgelora import Backbone, TrainConfig, finetune
from edgelora.cli import main
from edgelora.core import loop
from edgelora.files.checkpoint import load_checkpoint
from edgelora.runtime import cv_checkpoint, train
from edgelora.runtime.plan import Plan

CONFIG = TrainConfig(epochs=4, batch_size=16, cv_folds=3)


def _interrupt(*a, **k):
    raise KeyboardInterrupt


def test_resume_after_cross_validation_does_not_run_it_again(toy_bundle, toy_data, tmp_path, monkeypatch):
    x, y = toy_data
    bb = Backbone(toy_bundle)
    reference, ref_history = finetune(bb, x, y, CONFIG)
    ck = tmp_path / "ck"
    monkeypatch.setattr(loop, "fit", _interrupt)                        # stopped as the refit starts
    with pytest.raises(KeyboardInterrupt):
        finetune(bb, x, y, CONFIG, checkpoint_dir=ck)
    monkeypatch.undo()
    saved = load_checkpoint(ck)
    assert saved[0]["runs"] == [] and cv_checkpoint.restored(saved).recipes, saved
    assert "finished cross-validation" in cv_checkpoint.describe(saved)
    monkeypatch.setattr(train, "plan", _interrupt)                 # cross-validating again would stop here
    adapter, history = finetune(bb, x, y, CONFIG, checkpoint_dir=ck, resume=True)
    assert np.array_equal(adapter.flat, reference.flat)
    assert history.selection["chosen"] == ref_history.selection["chosen"]


def test_every_later_checkpoint_keeps_the_cross_validation(toy_bundle, toy_data, tmp_path):
    x, y = toy_data
    finetune(Backbone(toy_bundle), x, y, CONFIG, checkpoint_dir=tmp_path / "ck", checkpoint_every=("epochs", 1))
    saved = load_checkpoint(tmp_path / "ck")
    assert saved[0]["runs"] and cv_checkpoint.restored(saved).recipes
    assert "the cross-validation's choice (not run again)" in cv_checkpoint.describe(saved)


def test_ctrl_c_after_cross_validation_says_what_resumes(toy_bundle, toy_data, tmp_path, capsys, monkeypatch):
    """Ctrl-C during the refit said "cross-validation, if any, runs again" though it need not."""
    x, y = toy_data
    np.savez(tmp_path / "d.npz", x=x, y=y)
    args = ["finetune", str(toy_bundle), "--data", str(tmp_path / "d.npz"), "--out", str(tmp_path / "ad"),
            "--epochs", "4", "--batch-size", "16", "--cv-folds", "3", "--form", "skip",
            "--checkpoint-dir", str(tmp_path / "ck")]
    monkeypatch.setattr(loop, "fit", _interrupt)
    assert main(args) == 130
    err = capsys.readouterr().err.strip()
    assert "holds the finished cross-validation (not run again" in err and "--resume" in err, err
    monkeypatch.undo()
    monkeypatch.setattr(train, "plan", _interrupt)
    assert main(args + ["--resume"]) == 0, capsys.readouterr().err


def test_error_a_damaged_outcome_is_refused():
    with pytest.raises(ValueError, match="not a cross-validation outcome"):
        cv_checkpoint.restored(({}, cv_checkpoint.state(Plan((), {}, "given")) | {cv_checkpoint.KEY: np.frombuffer(b"{}", np.uint8)}))
