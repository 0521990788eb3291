"""The plan: decided once, it says how many epoch callbacks a fine-tune makes, and History and checkpoints follow it."""
import pytest

from edgelora import Backbone, TrainConfig
from edgelora.files.checkpoint import load_checkpoint
from edgelora.runtime.features import prepare
from edgelora.runtime import train
from edgelora.runtime.plan import plan
from edgelora.runtime.train import finetune_features

FAST = {"batch_size": 20, "min_steps": 20, "cv_seconds": 1000.0}


@pytest.mark.parametrize("settings", [{"epochs": 8}, {"epochs": 4, "val_fraction": 0.2},
                                      {"r": "auto", "epochs": "auto"}, {"r": "auto", "val_fraction": 0.2, "epochs": 3}])
def test_epoch_callbacks_are_the_plans_epochs(toy_bundle, toy_data, settings):
    """The CLI's progress bar was sized from the settings: 8 epochs where cross-validation chose 4 (--epochs 8),
    8 where a holdout trained 32 (--val-fraction 0.2: forms x scalings), 24 vs 64 (--rank auto)."""
    config = TrainConfig(**FAST, **settings)
    features, targets, split = prepare(Backbone(toy_bundle), *toy_data, config)
    seen, calls = [], []
    adapter, history = finetune_features(features, targets, split, config, callback=calls.append,
                                         on_plan=seen.append, deep_tier=False)
    (found,) = seen
    assert len(calls) == found.epochs and found.rows == history.samples
    assert found.selection == history.selection
    assert found.rule == ("holdout" if config.val_fraction else "cross-validation")
    if config.val_fraction:
        assert len(found.recipes) == len(history.candidates) > 1
    else:
        assert [found.recipes[0].epochs] == [history.chosen["epochs"]]


def test_plan_is_decided_once_from_settings_and_data(toy_bundle, toy_data):
    config = TrainConfig(form="skip", tap_scaling="none", val_fraction=0.2, epochs=5, weight_decay="auto", **FAST)
    features, targets, split = prepare(Backbone(toy_bundle), *toy_data, config)
    found = plan(features, targets, config, split)
    assert found.rule == "holdout" and found.epochs == 5 * len(config.weight_decay_grid)
    assert [rc.weight_decay for rc in found.recipes] == list(config.weight_decay_grid)
    assert found.summary()["runs"][0] == {"form": "skip", "tap_scaling": "none", "weight_decay": 0.0, "r": 4,
                                          "epochs": 5}


def test_checkpoint_keeps_the_plan_and_a_different_plan_starts_over(toy_bundle, toy_data, tmp_path):
    config = TrainConfig(form="skip", tap_scaling="none", cv_folds=0, epochs=3, **FAST)
    features, targets, split = prepare(Backbone(toy_bundle), *toy_data, config)
    finetune_features(features, targets, split, config, checkpoint_dir=tmp_path / "ck", deep_tier=False)
    meta, _ = load_checkpoint(tmp_path / "ck")
    assert meta["plan"] == plan(features, targets, config, split).summary()["runs"]
    meta["plan"][0]["epochs"] = 99        # as if cross-validation had chosen again, differently
    with pytest.warns(UserWarning, match="planned differently"):
        assert train._resumable((meta, {}), plan(features, targets, config, split)) is None
