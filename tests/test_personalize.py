"""Personalisation over time: sessions, holdout gate, label check, deferral, warm start, crash safety."""
import importlib
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest

from edgelora import Backbone
from edgelora.ops.personalize import SESSION_TRAINING, PersonalizeConfig, personalize
from edgelora.ops.samples import Samples
from edgelora.ops.store import AdapterStore
from edgelora.runtime.train_config import holdout_mask
from tests.helpers import BackboneCounter, mlp_bundle, random_mlp
from tests.test_train import count_checks_and_hashes

pmod = importlib.import_module("edgelora.ops.personalize")  # the module; `edgelora.ops.personalize` is also the function

CFG = PersonalizeConfig(train=replace(SESSION_TRAINING, epochs=10, batch_size=10), recipe="fixed")  # fast, fixed
CENTRES = np.random.default_rng(0).standard_normal((3, 10)) * 3


def session(n: int, seed: int, classes=(0, 1, 2)):
    """n samples of the toy blobs (tests/conftest.py's toy_data distribution) in random class order."""
    rng = np.random.default_rng(seed)
    y = rng.choice(np.asarray(classes), n)
    return (CENTRES[y] + rng.standard_normal((n, 10))).astype(np.float32), y


@pytest.fixture
def bb(toy_bundle):
    return Backbone(toy_bundle)


@pytest.fixture
def store(tmp_path):
    return AdapterStore(tmp_path / "store")


def test_holdout_is_the_latest_fraction_of_each_class():
    y = np.array([0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 2])
    mask = holdout_mask(y, 0.4, "classification")
    assert mask.tolist() == [False, False, False, False, False, False, True, True, True, True, False]
    assert holdout_mask(np.zeros(5), 0.2, "regression").tolist() == [False] * 4 + [True]


def test_sessions_publish_warm_start_and_only_new_samples_touch_the_backbone(bb, store, monkeypatch):
    inits, ran = [], BackboneCounter(bb)
    real = pmod.finetune_features
    monkeypatch.setattr(pmod, "finetune_features", lambda *a, **k: (inits.append(k["init"]), real(*a, **k))[1])
    r1 = personalize(store, "u1", bb, *session(60, 1), CFG)
    assert (r1.decision, r1.version, r1.current, r1.previous) == ("published", 1, 1, None)
    assert r1.samples["backbone_runs"] == 60 == ran.samples and "shared model" in r1.reason
    r2 = personalize(store, "u1", bb, *session(60, 2), CFG)
    assert (r2.decision, r2.current, r2.previous) == ("published", 2, 1)
    assert r2.samples["backbone_runs"] == 60 and ran.samples == 120        # earlier samples come from the cache
    assert r2.samples["holdout_verified"] == r1.samples["holdout_new"] and 10 <= r2.samples["holdout_new"] <= 14
    assert r2.samples["train"] == 120 - r2.samples["holdout_verified"] - r2.samples["holdout_new"]
    assert inits[0] is None and np.array_equal(inits[1].flat, store.load("u1", 1).flat)  # warm start
    assert store.info("u1", 2).parent == 1 and store.info("u1", 2).samples == r2.samples["train"]
    again = personalize(store, "u1", bb, *session(60, 2), CFG)                     # the same samples again
    assert again.decision == "unchanged" and again.samples["duplicates"] == 60 and ran.samples == 120
    sessions = Samples.load(store.adapter_dir("u1") / "data", bb.manifest).sessions
    assert [(s["session"], s["decision"], s["version"]) for s in sessions] == [(1, "published", 1), (2, "published", 2)]


def test_a_session_checks_its_samples_once_and_hashes_only_the_new_ones_once(bb, store, monkeypatch):
    personalize(store, "u1", bb, *session(60, 1), CFG)
    counts = count_checks_and_hashes(monkeypatch)
    r = personalize(store, "u1", bb, *session(60, 2), CFG)      # trains on and judges 120 samples
    assert r.decision == "published" and r.samples["train"] > 60
    # checked: the new samples, and the stored ones as they are read from disk; hashed: the new ones only
    assert counts == {"as_inputs": 2, "as_targets": 2, "hashed": 60}


def test_early_sessions_are_deferred_with_a_reason(bb, store):
    r = personalize(store, "a", bb, *session(30, 1, classes=(1,)), CFG)
    assert r.decision == "deferred" and "same class" in r.reason and r.version is None and store.current("a") is None
    r = personalize(store, "b", bb, *session(12, 2, classes=(0, 2)), CFG)
    assert r.decision == "deferred" and "batch_size" in r.reason
    r = personalize(store, "c", bb, *session(30, 3), replace(CFG, min_holdout=20))
    assert r.decision == "deferred" and "min_holdout" in r.reason
    r = personalize(store, "b", bb, *session(40, 4), CFG)
    assert r.decision == "published"
    assert r.samples["train"] + r.samples["holdout_verified"] + r.samples["holdout_new"] == 52  # deferred ones count


def test_bad_session_is_rejected_quarantined_and_can_be_resent(bb, store):
    for day in (1, 2):
        r = personalize(store, "u", bb, *session(60, day), CFG)
        assert r.decision == "published"
    x, y = session(120, 3)
    bad = personalize(store, "u", bb, x, (y + 1) % 3, CFG)                # every label wrong
    assert bad.decision == "rejected" and "worse by" in bad.reason and "v2 keeps serving" in bad.reason
    assert store.current("u") == 2 and store.info("u", 3).status == "rejected"
    assert bad.metrics["candidate"]["gate"]["accuracy"] < bad.metrics["reference"]["gate"]["accuracy"] - 0.02
    good = personalize(store, "u", bb, x, y, CFG)                          # quarantined inputs count as new
    assert good.decision == "published" and good.samples["new"] == 120 and store.current("u") == 4
    assert good.samples["train"] == r.samples["train"] + 120 - good.samples["holdout_new"]  # not the bad session


def test_label_check_rejects_labels_the_current_version_finds_implausible(bb, store):
    cfg = replace(CFG, margin=1.0, implausible_p=0.2)
    for day in (1, 2):
        personalize(store, "u", bb, *session(60, day), cfg)
    x, y = session(40, 3)
    r = personalize(store, "u", bb, x, (y + 1) % 3, cfg)
    assert r.decision == "rejected" and "implausible" in r.reason and r.metrics["implausible_labels"] > 0.5
    assert store.current("u") == 2


@pytest.mark.parametrize("stage", ["validated", "trained", "version_written", "data_written", "published"])
def test_interruption_at_any_stage_leaves_the_current_version_serving(bb, store, stage):
    personalize(store, "u", bb, *session(60, 1), CFG)
    before = store.load("u").flat.copy()

    def stop(at):
        if at == stage:
            raise KeyboardInterrupt(at)
    with pytest.raises(KeyboardInterrupt):
        personalize(store, "u", bb, *session(60, 2), CFG, progress=stop)
    expected = 2 if stage == "published" else 1
    assert store.current("u") == expected
    if expected == 1:
        assert np.array_equal(store.load("u").flat, before)
    r = personalize(store, "u", bb, *session(60, 2), CFG)                  # the next run just works
    assert r.decision == ("unchanged" if stage in ("data_written", "published") else "published")
    assert store.load("u") is not None


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from edgelora import Backbone, TrainConfig
    from edgelora.ops.personalize import PersonalizeConfig, personalize
    from edgelora.ops.store import AdapterStore
    bundle, store, data, stage = sys.argv[1:]
    z = np.load(data)
    def kill(at):
        if at == stage:
            os.kill(os.getpid(), signal.SIGKILL)
    personalize(AdapterStore(store), "u", Backbone(bundle), z["x"], z["y"],
                PersonalizeConfig(train=TrainConfig(epochs=10, batch_size=10), recipe="fixed"), progress=kill)
""")


@pytest.mark.parametrize("stage", ["trained", "version_written", "data_written"])
def test_sigkill_during_personalize_leaves_the_current_version_serving(bb, store, toy_bundle, tmp_path, stage):
    personalize(store, "u", bb, *session(60, 1), CFG)
    x, y = session(60, 2)
    np.savez(tmp_path / "new.npz", x=x, y=y)
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(toy_bundle), str(store.root),
                           str(tmp_path / "new.npz"), stage], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert store.current("u") == 1 and store.load("u", manifest=bb.manifest) is not None
    r = personalize(store, "u", bb, x, y, CFG)                           # no stale lock, cache intact
    assert r.decision == ("unchanged" if stage == "data_written" else "published")
    assert r.samples.get("backbone_runs", 0) == 0                         # the killed run had cached them


def test_error_bad_input_writes_nothing(bb, store):
    x, y = session(30, 1)
    with pytest.raises(ValueError, match="expected shape"):
        personalize(store, "u", bb, x[:, :5], y, CFG)
    with pytest.raises(ValueError, match="class indices 0..2"):
        personalize(store, "u", bb, x, y + 3, CFG)
    with pytest.raises(ValueError, match="not allowed"):
        personalize(store, "../u", bb, x, y, CFG)
    with pytest.raises(ValueError, match="holdout_fraction"):
        PersonalizeConfig(holdout_fraction=1.5)
    assert store.names() == []


def test_error_current_version_of_another_backbone(bb, store, tmp_path):
    personalize(store, "u", bb, *session(60, 1), CFG)
    mlp_bundle(tmp_path / "other", random_mlp([10, 8, 8, 3], seed=5), ["a", "b", "c"])
    with pytest.raises(ValueError, match="another backbone"):
        personalize(store, "u", Backbone(tmp_path / "other"), *session(60, 2), CFG)


def test_error_corrupt_data_is_detected(bb, store):
    personalize(store, "u", bb, *session(60, 1), CFG)
    path = store.adapter_dir("u") / "data" / "samples.npz"
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="corrupt"):
        personalize(store, "u", bb, *session(60, 2), CFG)
    assert store.current("u") == 1


def test_regression_backbone_is_gated_on_loss(tmp_path):
    mlp_bundle(tmp_path / "reg", random_mlp([10, 8, 2]), task="regression")
    bb, store = Backbone(tmp_path / "reg"), AdapterStore(tmp_path / "store")
    rng = np.random.default_rng(0)
    w = rng.standard_normal((10, 2))
    for day in range(2):
        x = rng.standard_normal((60, 10)).astype(np.float32)
        r = personalize(store, "r", bb, x, (x @ w).astype(np.float32), CFG)
        assert r.decision == "published" and "holdout loss" in r.reason, r.reason
    assert "accuracy" not in r.metrics["candidate"]["gate"]


def test_error_a_flipped_session_record_is_refused_and_named(bb, store):
    """`published`->`publisheD` in sessions.json silently dropped that session's samples from training."""
    personalize(store, "u", bb, *session(60, 1), CFG)
    path = store.adapter_dir("u") / "data" / "sessions.json"
    text = path.read_text()
    assert '"published"' in text
    path.write_text(text.replace('"published"', '"publisheD"'))
    with pytest.raises(ValueError, match=r"sessions\.json is corrupt or was edited"):
        personalize(store, "u", bb, *session(60, 2), CFG)
    assert store.current("u") == 1
    path.write_text(text.replace('"checksum"', '"checksuM"'))
    with pytest.raises(ValueError, match=r"sessions\.json is corrupt or was edited"):
        Samples.load(store.adapter_dir("u") / "data", bb.manifest)
