"""The recipe a personalisation session trains (ops/session_recipe.py), on the demo's real digit scans (a new
scanner): a new adapter's first session trains what cross-validation chooses on its training samples, as
`finetune` does; a later session the recipe recorded in the version it warm-starts from; "fixed" the
settings as given."""
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgelora import Backbone, TrainConfig, finetune
from edgelora.cli.demo_data import splits
from edgelora.ops.personalize import SESSION_TRAINING, PersonalizeConfig, personalize
from edgelora.ops.session_recipe import recorded_recipe, session_training
from edgelora.ops.store import AdapterStore
from edgelora.runtime.train_config import holdout_mask

BUNDLE = Path(__file__).resolve().parents[1] / "edgelora" / "data" / "demo_bundle"


@pytest.fixture(scope="module")
def scans():
    pytest.importorskip("sklearn", reason="the demo digits come from scikit-learn (test extra)")
    return splits(0)["finetune"]


def test_a_new_adapters_first_session_trains_what_cross_validation_chooses(scans, tmp_path):
    bb, store = Backbone(BUNDLE), AdapterStore(tmp_path / "store")
    x, y = scans[0][:150], scans[1][:150]
    r = personalize(store, "s", bb, x, y)
    assert r.version == 1, r.reason
    info, adapter = store.info("s", 1), store.load("s", 1)
    assert info.extra["recipe"] == "cross-validation"
    # the same selection run directly on the session's training samples (the holdout is never trained on)
    train = ~holdout_mask(y, PersonalizeConfig().holdout_fraction, "classification")
    expected, history = finetune(bb, x[train], y[train], session_training(SESSION_TRAINING, None)[0])
    assert adapter.config.training["chosen"] == history.chosen == info.extra["chosen"]
    assert adapter.config.training["settings"]["epochs"] == "auto" and history.chosen["epochs"] != SESSION_TRAINING.epochs
    if len(np.unique(y[train])) == 10:   # no class masked out
        np.testing.assert_allclose(adapter.flat, expected.flat, atol=1e-6)


@pytest.mark.parametrize("recipe", ["chosen", "fixed"])
def test_a_session_trains_the_recipe_recorded_in_the_version_it_warm_starts_from(scans, tmp_path, recipe):
    bb, store = Backbone(BUNDLE), AdapterStore(tmp_path / "store")
    (x, y), n = scans, 150
    first, _ = finetune(bb, x[:n], y[:n], TrainConfig(weight_decay="auto"))   # chosen on this device
    recorded = recorded_recipe(first)
    assert recorded is not None and recorded["epochs"] != SESSION_TRAINING.epochs   # else the test could not tell
    store.set_current("s", store.add_version("s", first, parent=None, samples=n).version)
    r = personalize(store, "s", bb, x[n:n + 100], y[n:n + 100], PersonalizeConfig(recipe=recipe))
    assert r.version == 2, r.reason
    settings = store.load("s", 2).config.training["settings"]
    want = recorded if recipe == "chosen" else {"weight_decay": SESSION_TRAINING.weight_decay,
                                                "epochs": SESSION_TRAINING.epochs}
    assert {k: settings[k] for k in want} == want
    assert store.info("s", 2).extra["recipe"] == ("recorded" if recipe == "chosen" else "fixed")
    assert store.load("s", 2).config.r == first.config.r   # the shape is the warm start's


def test_a_version_without_a_usable_record_falls_back_to_cross_validation(scans):
    bb = Backbone(BUNDLE)
    x, y = scans[0][:120], scans[1][:120]
    identity, history = finetune(bb, x, y, TrainConfig(epochs=1, cv_folds=0, form="skip", tap_scaling="none"))
    broken = replace(identity, config=replace(identity.config, training={"chosen": {"form": "identity", "epochs": 0}}))
    assert recorded_recipe(broken) is None
    settings, source = session_training(SESSION_TRAINING, broken)
    assert source == "cross-validation" and settings.tap_scaling == "none" and settings.val_fraction == 0
