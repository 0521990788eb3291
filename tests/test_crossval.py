"""Cross-validated recipe selection: folds, the stacked trainer against single runs, folding, refit, seeds."""
import dataclasses

import numpy as np
import pytest

from edgelora import Backbone, Predictor, TrainConfig, finetune
from edgelora.core import lora
from edgelora.core.crossval import Stack, select
from edgelora.core.scaling import standardizer as tap_standardizer
from edgelora.core.lora import fold_standardizer
from edgelora.core.losses import cross_entropy_grad, loss_grad
from edgelora.core.optim import AdamW, from_config
from edgelora.core.selection import folds
from edgelora.runtime.features import FeatureSource

CV = TrainConfig(epochs=6, batch_size=10, lr=1e-2)


def unit(weight):
    """(M, b) 0/1 weights -> (M, b, 1) summing to 1 per model (what cross_validate gives a batch)."""
    return (weight / np.maximum(weight.sum(axis=1, keepdims=True), 1e-12))[:, :, None]


def step(stack, opt, y0, t, onehot, weight, lr):
    """One optimiser step of every model of a stack, as cross_validate takes it."""
    y, h = stack.forward(y0, t)
    g = loss_grad(y, onehot, weight)
    stack.backward(g, h, t)
    opt.step(stack.flat, stack.grad, lr)


def test_no_sample_trains_the_model_that_validates_it():
    """The stack gives each fold's model weight 0 on its own fold: a model's gradient never sees them."""
    rng = np.random.default_rng(0)
    layout = lora.Layout(("a",), (5,), 3, 2, True)
    k, n = 4, 40
    y = rng.integers(0, 3, n)
    fold = folds(y, k, "classification")
    t, y0 = rng.standard_normal((n, 5)).astype(np.float32), rng.standard_normal((n, 3)).astype(np.float32)
    for f in range(k):
        stack = Stack(layout, 1, k, 1.0, np.zeros(k, np.float32), CV)
        opt = from_config(CV, stack.decay.size, stack.decay)
        only = np.flatnonzero(fold == f)                     # a batch of fold f's samples only
        weight = (fold[only][None, :] != np.arange(k)[:, None]).astype(np.float32)
        step(stack, opt, y0[only], t[only][None], np.eye(3, dtype=np.float32)[y[only]], unit(weight), 0.1)
        moved = [bool(np.any(stack.p["B"][j]) or np.any(stack.p["bias"][j])) for j in range(k)]
        assert moved == [j != f for j in range(k)]


def test_stack_equals_single_runs():
    """Each model of a stack (2 input groups x 3 models) follows exactly the single-model forward/backward/AdamW
    on its own rows of its own group's taps."""
    rng = np.random.default_rng(1)
    layout = lora.Layout(("a", "b"), (6, 4), 3, 2, True)
    groups, mg, b = 2, 3, 8
    decays = np.array([0.0, 0.1, 1.0], np.float32)
    stack = Stack(layout, groups, mg, 2.0, decays, CV)
    opt = from_config(CV, stack.decay.size, stack.decay)
    y = rng.integers(0, 3, b)
    weight = (rng.random((groups * mg, b)) < 0.7).astype(np.float32)
    weight[:, 0] = 1.0
    singles = [lora.init(layout, CV.seed) for _ in range(groups * mg)]
    opts = [AdamW(layout.size, weight_decay=float(decays[m % mg])) for m in range(groups * mg)]
    onehot = np.eye(3, dtype=np.float32)[y]
    for _ in range(5):
        t, y0 = rng.standard_normal((groups, b, 10)).astype(np.float32), rng.standard_normal((b, 3)).astype(np.float32)
        step(stack, opt, y0, t, onehot, unit(weight), 0.05)
        for m in range(groups * mg):
            rows = weight[m] > 0
            p, g = lora.views(singles[m], layout), lora.views(np.zeros_like(singles[m]), layout)
            out, saved = lora.forward(p, y0[rows], t[m // mg][rows], layout, 2.0)
            lora.backward(cross_entropy_grad(out, onehot[rows]), saved, p, g, layout, 2.0)
            opts[m].step(singles[m], np.concatenate([v.ravel() for v in g.values()]), 0.05)
    for m in range(groups * mg):
        p = lora.views(singles[m], layout)
        assert np.allclose(stack.p["A.a"][m // mg, :, m % mg], p["A.a"], atol=1e-5)
        assert np.allclose(stack.p["A.b"][m // mg, :, m % mg], p["A.b"], atol=1e-5)
        assert np.allclose(stack.p["B"][m], p["B"], atol=1e-5)
        assert np.allclose(stack.p["bias"][m], p["bias"], atol=1e-5)


def test_folded_standardisation_is_exact():
    rng = np.random.default_rng(2)
    layout = lora.Layout(("a", "b"), (5, 3), 4, 2, True)
    t = (rng.standard_normal((30, 8)) * 5 + 3).astype(np.float32)
    t[:, 2] = 7.0                                             # a constant feature: ignored, not divided by 0
    mu, inv = tap_standardizer(lambda idx: (None, t[idx]), len(t), chunk=7)   # chunks that do not divide 30
    flat = rng.standard_normal(layout.size).astype(np.float32)
    y0 = rng.standard_normal((30, 4)).astype(np.float32)
    want = lora.forward(lora.views(flat, layout), y0, (t - mu) * inv, layout, 1.5)[0]
    folded = fold_standardizer(flat, layout, 1.5, mu, inv)
    got = lora.forward(lora.views(folded, layout), y0, t, layout, 1.5)[0]
    assert inv[2] == 0 and np.abs(got - want).max() <= 1e-4
    np.testing.assert_allclose(mu, t.astype(np.float64).mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(inv[[0, 1, 3]], 1 / t.astype(np.float64).std(axis=0)[[0, 1, 3]], rtol=1e-5)


def test_cv_refits_on_every_sample_and_reports_an_estimate(toy_bundle, toy_data):
    bb = Backbone(toy_bundle)
    x, y = toy_data
    adapter, history = finetune(bb, x, y, CV)
    assert history.samples == {"train": len(x), "val": 0}
    sel = history.selection
    assert sel["folds"] == 5 and len(sel["candidates"]) == 2 * 2 * 3      # forms x tap scalings x epoch marks
    chosen = history.chosen
    best = max(c["score"] for c in sel["candidates"])                        # within one paired SE of the best
    assert best - sel["chosen"]["score"] <= 0.1 and sel["budget"]["stopped"] == "explicit"
    assert 0 <= sel["no_finetune"]["score"] <= 1 and len(sel["chosen"]["score_folds"]) == 5
    # the refit is exactly the chosen recipe trained on all samples without selection
    fixed = dataclasses.replace(CV, weight_decay=chosen["weight_decay"], tap_scaling=chosen["tap_scaling"],
                                epochs=chosen["epochs"], form=chosen["form"], cv_folds=0)
    again, h2 = finetune(bb, x, y, fixed)
    assert np.array_equal(adapter.flat, again.flat) and h2.samples["train"] == len(x)
    assert adapter.config.training["cross_validation"]["chosen"]["score"] == sel["chosen"]["score"]
    before = Predictor(bb).evaluate(x, y)["accuracy"]
    assert Predictor(bb, adapter).evaluate(x, y)["accuracy"] > before


def test_cv_on_evenly_spaced_rows_of_a_large_set_refits_on_all(toy_bundle, toy_data):
    """cv_rows_per_class caps the cross-validated rows at that many x classes, evenly spaced in sample order
    (a subset of whole time ranges, every class kept); the refit still trains on every sample."""
    bb = Backbone(toy_bundle)
    x, y = toy_data                                                          # 120 samples, 3 classes
    read = []
    y0, t = bb.features({"x": x})

    def rows(idx):
        read.append(np.asarray(idx))
        return y0[idx], t[idx]
    features = FeatureSource(rows, bb.manifest, {"x": x}, name="backbone once")
    layouts = {("skip", 2): lora.Layout(bb.manifest.tap_names, bb.manifest.tap_widths, 3, 2, True)}
    _, sel = select(features, y, scalings=["none"], layouts=layouts, alphas={("skip", 2): 4.0}, decays=[1.0],
                    config=CV, task="classification", max_rows=10 * 3)
    rows = read[0]
    assert len(rows) == 30 and np.all(np.diff(rows) > 0) and rows[0] == 0 and rows[-1] == 119
    assert np.ptp(np.diff(rows)) <= 1 and set(y[rows]) == {0, 1, 2}          # evenly spaced, every class
    assert sel["method"] == "5-fold cross-validation on 30 of 120 samples, evenly spaced in sample order"
    _, sel = select(features, y, scalings=["none"], layouts=layouts, alphas={("skip", 2): 4.0}, decays=[1.0],
                    config=dataclasses.replace(CV, cv_repeats=0), task="classification", max_rows=10 * 3)
    assert sel["method"].startswith("5-fold cross-validation (4 repeats) on 30") and sel["repeats"] == 4
    assert len(sel["chosen"]["score_folds"]) == 20                          # 4 repeats x 5 folds
    capped, h = finetune(bb, x, y, dataclasses.replace(CV, cv_rows_per_class=10))
    assert h.selection["method"].endswith("on 30 of 120 samples, evenly spaced in sample order")
    assert h.samples["train"] == 120
    fixed = dataclasses.replace(CV, weight_decay=h.chosen["weight_decay"], tap_scaling=h.chosen["tap_scaling"],
                                epochs=h.chosen["epochs"], form=h.chosen["form"], cv_folds=0)
    assert np.array_equal(capped.flat, finetune(bb, x, y, fixed)[0].flat)   # the refit: every sample
    assert finetune(bb, x, y, CV)[1].selection["method"] == "5-fold cross-validation"   # 128 x 3 > 120: all


def test_cv_same_seed_bit_identical(toy_bundle, toy_data):
    bb = Backbone(toy_bundle)
    a1, h1 = finetune(bb, *toy_data, CV)
    a2, h2 = finetune(bb, *toy_data, CV)
    assert np.array_equal(a1.flat, a2.flat) and h1.selection == h2.selection


def test_standard_scaling_adapter_acts_on_raw_taps(toy_bundle, toy_data):
    bb = Backbone(toy_bundle)
    x, y = toy_data
    adapter, history = finetune(bb, x, y, dataclasses.replace(CV, tap_scaling="standard", weight_decay=0.1, cv_folds=0,
                                                              form="skip"))
    assert history.chosen["tap_scaling"] == "standard"
    y0, t = bb.features({"x": x})
    layout = lora.Layout(bb.manifest.tap_names, bb.manifest.tap_widths, 3, adapter.config.r, True)
    out = lora.forward(lora.views(adapter.flat, layout), y0, t, layout, adapter.config.lora_alpha / adapter.config.r)[0]
    assert np.abs(out - Predictor(bb, adapter).outputs(x)).max() < 1e-4
    assert (out.argmax(1) == y).mean() > 0.9


@pytest.mark.parametrize("field,value,message", [
    ("cv_folds", 1, "`cv_folds` should be 0"),
    ("epoch_fractions", (0.0,), "`epoch_fractions` should list numbers in"),
    ("cv_rows_per_class", -1, "`cv_rows_per_class` should be >= 0"),
])
def test_error_bad_cv_settings(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})


def test_error_auto_without_selection():
    with pytest.raises(ValueError, match="needs cross-validation"):
        TrainConfig(cv_folds=0)


def test_error_too_few_samples_for_cv(toy_bundle):
    bb = Backbone(toy_bundle)
    x = np.random.default_rng(0).standard_normal((3, 10)).astype(np.float32)
    with pytest.raises(ValueError, match="cross-validation needs at least 10 samples, found 3"):
        finetune(bb, x, np.array([0, 1, 2]), dataclasses.replace(CV, batch_size=2))


def test_last_form_is_a_dense_update_of_the_last_layer(toy_bundle, toy_data):
    """form 'last': r = C, B fixed at I / s on the last tap and 0 elsewhere, A trained only on the last tap:
    the adapter computes y0 + t_K A_K + b, i.e. FT-Last through the cache."""
    bb = Backbone(toy_bundle)
    x, y = toy_data
    adapter, history = finetune(bb, x, y, dataclasses.replace(CV, form="last", tap_scaling="none", cv_folds=0))
    c, m = 3, bb.manifest
    assert history.chosen["form"] == "last" and adapter.config.r == c
    layout = lora.Layout(m.tap_names, m.tap_widths, c, c, True)
    p = lora.views(adapter.flat, layout)
    scale = adapter.config.lora_alpha / c
    assert np.array_equal(lora.tap_B(p, layout, len(m.tap_names) - 1), np.eye(c, dtype=np.float32) / scale)
    assert not np.any(p["B"][:-c]) and not any(np.any(p[key]) for key in layout.a_keys[:-1])
    y0, t = bb.features({"x": x})
    a, b = layout.bounds[-1]
    dense = y0 + t[:, a:b] @ p[layout.a_keys[-1]] + p["bias"]
    assert np.abs(dense - Predictor(bb, adapter).outputs(x)).max() < 1e-4
    assert Predictor(bb, adapter).evaluate(x, y)["accuracy"] > Predictor(bb).evaluate(x, y)["accuracy"]


def test_identity_wins_and_is_returned_unchanged_when_every_adapter_is_worse(toy_bundle, toy_data):
    """Labels the backbone already predicts, and a learning rate that wrecks any adapter: "no fine-tuning" is
    estimated better, so finetune returns the identity adapter (outputs = the backbone's) and trains nothing;
    identity=False (CLI --force-adapter) trains the best adapter as before."""
    bb = Backbone(toy_bundle)
    x = toy_data[0]
    y = Predictor(bb).predict(x)
    wild = dataclasses.replace(CV, lr=50.0, optimizer="sgd", momentum=0.0, weight_decay=0.0)
    adapter, history = finetune(bb, x, y, wild)
    sel = history.selection
    assert history.stopped == "identity" and sel["chosen"]["form"] == "identity" and history.epochs == []
    assert sel["adapter"]["score"] < sel["no_finetune"]["score"] == 1.0
    np.testing.assert_array_equal(Predictor(bb, adapter).outputs(x), Predictor(bb).outputs(x))
    forced, h2 = finetune(bb, x, y, dataclasses.replace(wild, identity=False))
    assert h2.stopped != "identity" and h2.chosen["form"] in ("skip", "last") and h2.epochs


def test_auto_budget_has_a_step_floor_and_extends_while_it_improves(toy_bundle, toy_data):
    """epochs="auto": at least min_steps optimiser steps however few the samples (20 samples at batch 20: 300
    epochs, not 30), extended while the largest count is still clearly better, and an explicit count is kept."""
    bb = Backbone(toy_bundle)
    x, y = toy_data
    few = np.r_[0:7, 40:47, 80:86]                                             # 20 samples
    auto = TrainConfig(batch_size=20, lr=1e-3, weight_decay=0.0, min_steps=300, form="skip", tap_scaling="none")
    _, h = finetune(bb, x[few], y[few], auto)
    assert h.selection["budget"] == {"epochs": 300, "start": 300, "marks": [75, 150, 300], "stopped": "score",
                                     "min_steps": 300, "seconds_limit": 10.0}
    slow = dataclasses.replace(auto, lr=3e-4, min_steps=8, epoch_fractions=(0.5, 1.0))   # still improving at 30
    _, h = finetune(bb, x[few], y[few], slow)
    b = h.selection["budget"]
    assert b["start"] == 30 and b["marks"] == [15, 30, 60, 120] and b["stopped"] == "score"
    assert h.chosen["epochs"] in (60, 120)
    _, h = finetune(bb, x[few], y[few], dataclasses.replace(slow, cv_seconds=1e-6))       # the time budget stops it
    assert h.selection["budget"]["marks"] == [15, 30] and h.selection["budget"]["stopped"] == "time"
    _, h = finetune(bb, x[few], y[few], dataclasses.replace(slow, epochs=30))
    assert h.selection["budget"]["marks"] == [15, 30] and h.selection["budget"]["stopped"] == "explicit"
