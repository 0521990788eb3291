"""The trainer: Skip-Cache equivalence, reproducibility, validation, early stopping, guards, errors."""
import dataclasses
import sys

import numpy as np
import pytest

from edgelora import Backbone, Predictor, SkipCache, TrainConfig, finetune
from edgelora.runtime.train_config import validation_split
from tests.helpers import BackboneCounter


def count_checks_and_hashes(monkeypatch) -> dict:
    """Count, until the test ends, the sample checks (files/data.as_inputs and as_targets, called from any
    edgelora module) and the samples hashed into Skip-Cache keys (runtime/cache.sample_keys)."""
    import edgelora.cli.finetune  # noqa: F401 - every module that may check or hash, loaded before patching
    import edgelora.runtime.onnx_trainer  # noqa: F401
    from edgelora.files import data
    from edgelora.runtime import cache
    counts = {"as_inputs": 0, "as_targets": 0, "hashed": 0}

    def counted(name, fn, amount=lambda *a: 1):
        def wrapper(*args, **kwargs):
            counts[name] += amount(*args)
            return fn(*args, **kwargs)
        return name, fn, wrapper
    patches = [counted("as_inputs", data.as_inputs), counted("as_targets", data.as_targets),
               counted("hashed", cache.sample_keys, lambda inputs: data.num_samples(inputs))]
    for module in [m for n, m in sys.modules.items() if n.startswith("edgelora")]:
        for attr, value in list(vars(module).items()):
            for _, fn, wrapper in patches:
                if value is fn:
                    monkeypatch.setattr(module, attr, wrapper)
    return counts

def holdout(**settings) -> TrainConfig:
    """The holdout policy these tests exercise: the last 20 % of each class validates, raw taps, decay 1.0."""
    return TrainConfig(**{"val_fraction": 0.2, "weight_decay": 1.0, "form": "skip", "tap_scaling": "none", **settings})


FAST = holdout(epochs=8, batch_size=10, lr=1e-2)


def test_cached_equals_backbone_every_step_and_runs_backbone_once(toy_bundle, toy_data):
    x, y = toy_data
    bb_cached, bb_live = Backbone(toy_bundle), Backbone(toy_bundle)
    ran_cached, ran_live = BackboneCounter(bb_cached), BackboneCounter(bb_live)
    a1, h1 = finetune(bb_cached, x, y, FAST)
    a2, h2 = finetune(bb_live, x, y, FAST, use_cache=False)
    assert np.abs(a1.flat - a2.flat).max() <= 1e-6
    assert ran_cached.samples == len(x)                    # Skip-Cache: once per sample
    assert ran_live.samples >= FAST.epochs * len(x)         # Skip-LoRA without cache: every step
    assert [e["val_loss"] for e in h1.epochs] == pytest.approx([e["val_loss"] for e in h2.epochs], abs=1e-5)


def test_finetune_checks_the_samples_once_and_hashes_each_once(toy_bundle, toy_data, monkeypatch):
    counts = count_checks_and_hashes(monkeypatch)
    finetune(Backbone(toy_bundle), *toy_data, FAST)
    assert counts == {"as_inputs": 1, "as_targets": 1, "hashed": len(toy_data[1])}


def test_same_seed_same_adapter_bit_for_bit(toy_bundle, toy_data):
    bb = Backbone(toy_bundle)
    a1, _ = finetune(bb, *toy_data, FAST)
    a2, _ = finetune(bb, *toy_data, FAST)
    a3, _ = finetune(bb, *toy_data, dataclasses.replace(FAST, seed=1))
    assert np.array_equal(a1.flat, a2.flat) and not np.array_equal(a1.flat, a3.flat)


def test_training_improves_a_shifted_model(toy_bundle, toy_data):
    bb = Backbone(toy_bundle)
    x, y = toy_data
    adapter, history = finetune(bb, x, y, holdout(epochs=30, batch_size=10, weight_decay=0.0))
    before = Predictor(bb).evaluate(x, y)["accuracy"]
    after = Predictor(bb, adapter).evaluate(x, y)["accuracy"]
    assert after > before + 0.2 and after > 0.9
    assert history.cache["misses"] == 120 and history.cache_seconds > 0 and history.train_seconds > 0
    assert adapter.config.training["chosen"]["weight_decay"] == 0.0


def test_history_restores_best_epoch_and_early_stops(toy_bundle, toy_data):
    cfg = holdout(epochs=40, batch_size=10, lr=0.05, patience=3, weight_decay=0.0)
    x = toy_data[0]
    y = np.random.default_rng(1).integers(0, 3, len(x))  # random labels: fitting them makes val loss rise
    toy_data = (x, y)
    adapter, h = finetune(Backbone(toy_bundle), x, y, cfg)
    losses = [e["val_loss"] for e in h.epochs]
    assert h.best_epoch == int(np.argmin(losses)) + 1
    assert h.stopped == "early_stopping" and len(h.epochs) == h.best_epoch + 3
    _, val = validation_split(y, 0.2, "tail", 0, "classification")
    got = Predictor(Backbone(toy_bundle), adapter).evaluate(x[val], y[val])["loss"]
    assert got == pytest.approx(min(losses), rel=1e-5)


def test_nan_guard_keeps_last_good_parameters(toy_bundle, toy_data):
    x, y = toy_data
    cfg = holdout(epochs=5, batch_size=10, lr=1e30, optimizer="sgd", weight_decay=0.0, momentum=0.0)
    with np.errstate(all="ignore"):
        adapter, h = finetune(Backbone(toy_bundle), x * 1e3, y, cfg)
    assert h.stopped == "non_finite" and np.isfinite(adapter.flat).all()


def test_auto_weight_decay_and_rank_report_their_choice(toy_bundle, toy_data):
    cfg = holdout(epochs=4, batch_size=10, r="auto", weight_decay="auto", rank_grid=(2, 4),
                      weight_decay_grid=(0.0, 0.1))
    adapter, h = finetune(Backbone(toy_bundle), *toy_data, cfg)
    assert len(h.candidates) == 4 and {c["r"] for c in h.candidates} == {2, 4}
    assert adapter.config.r == h.chosen["r"] and adapter.config.training["chosen"] == h.chosen
    best = min(c["best_val_loss"] for c in h.candidates)
    chosen = next(c for c in h.candidates if (c["r"], c["weight_decay"]) == (h.chosen["r"], h.chosen["weight_decay"]))
    assert chosen["best_val_loss"] <= best + cfg.select_tolerance


def test_tail_split_takes_each_class_most_recent_samples():
    y = np.array([0, 1, 0, 1, 0, 1, 0, 1, 0, 1])
    train, val = validation_split(y, 0.2, "tail", 0, "classification")
    assert val.tolist() == [8, 9] and len(train) == 8
    train, val = validation_split(np.arange(10.0), 0.3, "tail", 0, "regression")
    assert val.tolist() == [7, 8, 9]


def test_warm_start_continues_from_an_adapter(toy_bundle, toy_data):
    bb = Backbone(toy_bundle)
    first, _ = finetune(bb, *toy_data, FAST)
    _, h = finetune(bb, *toy_data, dataclasses.replace(FAST, epochs=1), init=first)
    _, cold = finetune(bb, *toy_data, dataclasses.replace(FAST, epochs=1))
    assert h.epochs[0]["val_loss"] < cold.epochs[0]["val_loss"]


def test_balanced_class_weights_and_callback(toy_bundle, toy_data):
    x, y = toy_data
    seen = []
    finetune(Backbone(toy_bundle), x[:100], y[:100], dataclasses.replace(FAST, class_weights="balanced"),
             callback=seen.append)
    assert [s["epoch"] for s in seen] == list(range(1, 9)) and "val_loss" in seen[0]


def test_regression(tmp_path):
    from tests.helpers import mlp_bundle, random_mlp
    mlp_bundle(tmp_path / "reg", random_mlp([6, 8, 2]), task="regression")
    bb = Backbone(tmp_path / "reg")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 6)).astype(np.float32)
    target = bb.features(x)[0] + x[:, :2] * 0.5
    adapter, h = finetune(bb, x, target, holdout(epochs=20, batch_size=20, weight_decay=0.0))
    before, after = Predictor(bb).evaluate(x, target), Predictor(bb, adapter).evaluate(x, target)
    assert after["mse"] < 0.2 * before["mse"] and set(after) >= {"mse", "mae"}


def test_disk_float16_cache_trains(toy_bundle, toy_data, tmp_path):
    bb = Backbone(toy_bundle)
    cache = SkipCache(bb, tmp_path / "c", dtype="float16")
    adapter, h = finetune(bb, *toy_data, FAST, cache=cache)
    assert h.cache["dtype"] == "float16" and h.cache["on_disk"] and np.isfinite(adapter.flat).all()


def test_error_labels_out_of_range(toy_bundle, toy_data):
    x, y = toy_data
    with pytest.raises(ValueError, match=r"class indices 0..2 \(a, b, c\); found \[3\]"):
        finetune(Backbone(toy_bundle), x, np.where(y == 2, 3, y), FAST)


def test_error_labels_wrong_type(toy_bundle, toy_data):
    x, y = toy_data
    with pytest.raises(TypeError, match="integer class indices"):
        finetune(Backbone(toy_bundle), x, y + 0.5, FAST)
    with pytest.raises(ValueError, match=r"label '0' \(sample 0\) is not a class of this bundle; expected one of "
                                         r"\['a', 'b', 'c'\]"):     # strings are class names
        finetune(Backbone(toy_bundle), x, y.astype(str), FAST)
    with pytest.raises(TypeError, match="numeric targets or class names, found dtype complex"):
        finetune(Backbone(toy_bundle), x, y.astype(complex), FAST)


def test_error_label_count(toy_bundle, toy_data):
    with pytest.raises(ValueError, match="expected 120 targets.*found 119"):
        finetune(Backbone(toy_bundle), toy_data[0], toy_data[1][:-1], FAST)


def test_error_single_class(toy_bundle, toy_data):
    with pytest.raises(ValueError, match="same class.*at least 2 classes"):
        finetune(Backbone(toy_bundle), toy_data[0], np.zeros(120, int), FAST)


def test_error_fewer_samples_than_a_batch(toy_bundle, toy_data):
    x, y = toy_data
    with pytest.raises(ValueError, match="training split has 7 samples, fewer than `batch_size` 10"):
        finetune(Backbone(toy_bundle), x[[0, 1, 2, 40, 41, 42, 80, 81, 82, 83]],
                 y[[0, 1, 2, 40, 41, 42, 80, 81, 82, 83]], FAST)


def test_error_empty_and_nan(toy_bundle, toy_data):
    with pytest.raises(ValueError, match="no samples"):
        finetune(Backbone(toy_bundle), np.zeros((0, 10), np.float32), np.zeros(0, int), FAST)
    x = toy_data[0].copy()
    x[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        finetune(Backbone(toy_bundle), x, toy_data[1], FAST)


@pytest.mark.parametrize("field,value,message", [
    ("r", 0, "`r` should be a positive integer value but the value passed is 0"),
    ("lr", -1.0, "`lr` should be a positive number"),
    ("epochs", 0, "`epochs` should be a positive integer"),
    ("weight_decay", -0.1, "`weight_decay` should be a number >= 0 or 'auto'"),
    ("val_fraction", 1.0, "`val_fraction` should be in"),
])
def test_error_absurd_settings(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("stop_at", [1, 5, 11])
def test_resume_from_checkpoint_gives_the_uninterrupted_adapter(toy_bundle, toy_data, tmp_path, stop_at):
    cfg = holdout(epochs=6, batch_size=10, weight_decay="auto", weight_decay_grid=(0.0, 0.1))
    bb = Backbone(toy_bundle)
    reference, ref_h = finetune(bb, *toy_data, cfg)
    seen = []

    def crash(rec):
        seen.append(rec)
        if len(seen) == stop_at:  # epochs are counted over both candidates: 11 = second candidate, epoch 5
            raise Interrupt
    with pytest.raises(Interrupt):
        finetune(bb, *toy_data, cfg, checkpoint_dir=tmp_path / "ckpt", callback=crash)
    resumed, h = finetune(bb, *toy_data, cfg, checkpoint_dir=tmp_path / "ckpt", resume=True)
    assert np.array_equal(resumed.flat, reference.flat)
    assert h.chosen == ref_h.chosen and [e["val_loss"] for e in h.epochs] == [e["val_loss"] for e in ref_h.epochs]


def test_error_resume_with_other_data(toy_bundle, toy_data, tmp_path):
    bb = Backbone(toy_bundle)
    finetune(bb, *toy_data, FAST, checkpoint_dir=tmp_path / "ckpt")
    x, y = toy_data
    with pytest.raises(ValueError, match=r"written for another run \(different data\)"):
        finetune(bb, x[:100], y[:100], FAST, checkpoint_dir=tmp_path / "ckpt", resume=True)
    other = TrainConfig(**{**FAST.__dict__, "lr": FAST.lr / 2})
    with pytest.raises(ValueError, match=r"\(different settings\)"):
        finetune(bb, x, y, other, checkpoint_dir=tmp_path / "ckpt", resume=True)
    with pytest.raises(ValueError, match=r"\(different settings and data\)"):
        finetune(bb, x[:100], y[:100], other, checkpoint_dir=tmp_path / "ckpt", resume=True)


def test_error_corrupt_checkpoint(toy_bundle, toy_data, tmp_path):
    bb = Backbone(toy_bundle)
    finetune(bb, *toy_data, FAST, checkpoint_dir=tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "checkpoint.safetensors"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ValueError, match="checkpoint.safetensors is corrupt"):
        finetune(bb, *toy_data, FAST, checkpoint_dir=tmp_path / "ckpt", resume=True)


def test_numpy_scalars_in_a_config_become_python_numbers(toy_bundle, toy_data, tmp_path):
    cfg = holdout(epochs=np.int64(2), lr=np.float32(0.01), weight_decay_grid=(np.float64(0.0), 0.1),
                      batch_size=10, weight_decay="auto")
    assert type(cfg.epochs) is int and type(cfg.lr) is float and type(cfg.weight_decay_grid[0]) is float
    adapter, _ = finetune(Backbone(toy_bundle), *toy_data, cfg)
    adapter.save(tmp_path / "ad")  # the settings are written as JSON


def test_error_predictor_batch_size(toy_bundle):
    from edgelora import Predictor
    with pytest.raises(ValueError, match="`batch_size` should be a positive integer, found 0"):
        Predictor(Backbone(toy_bundle), batch_size=0)


def test_error_resume_with_another_cache_dtype(toy_bundle, toy_data, tmp_path):
    bb = Backbone(toy_bundle)
    finetune(bb, *toy_data, FAST, checkpoint_dir=tmp_path / "ckpt")
    with pytest.raises(ValueError, match=r"\(different feature source\)"):
        finetune(bb, *toy_data, FAST, cache=SkipCache(bb, dtype="float16"), checkpoint_dir=tmp_path / "ckpt",
                 resume=True)


def test_error_all_zero_class_weights():
    with pytest.raises(ValueError, match="not all 0"):
        TrainConfig(class_weights=(0.0, 0.0, 0.0))


def test_feature_source_reads_the_same_rows_from_ram_disk_and_backbone(toy_bundle, toy_data, tmp_path):
    from edgelora.files.data import as_inputs
    from edgelora.core.scaling import scaled
    from edgelora.runtime.features import FeatureSource
    bb = Backbone(toy_bundle)
    inputs, idx = as_inputs(toy_data[0], bb.manifest), np.array([5, 0, 77, 5])
    ram = FeatureSource.from_cache(SkipCache(bb), inputs)
    disk = FeatureSource.from_cache(SkipCache(bb, tmp_path, memory_budget=1000), inputs, chunk=50)  # rows > budget
    live = FeatureSource.from_backbone(bb, inputs)
    assert (ram.static, ram.lazy, disk.static, disk.lazy, live.static) == (True, False, True, True, False)
    for source in (disk, live):
        for a, b in zip(source(idx), ram(idx)):
            np.testing.assert_array_equal(a, b)
    width = bb.num_outputs + sum(bb.tap_widths)
    assert ram.cv_rows(2) is None and disk.cv_rows(2) == 1000 // (8 * width * 2)
    t = scaled(ram(np.arange(len(ram)))[1], "standard", ram.standardizer)
    live_t = (live(np.arange(len(live)))[1] - ram.standardizer[0]) * ram.standardizer[1]
    np.testing.assert_allclose(t, live_t, atol=1e-6)
    assert np.abs(t.mean(axis=0)).max() < 1e-4 and np.abs(t.std(axis=0)[ram.standardizer[1] > 0] - 1).max() < 1e-3
