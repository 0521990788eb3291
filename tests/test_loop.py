"""loop.fit: runs trained side by side over shared batches end where each run ends alone, bit for bit; a holdout
fine-tune (runtime/train.py) trains its candidates so, and picks what it picked when they ran one after another."""
import dataclasses

import numpy as np
import pytest

from edgelora import Backbone, TrainConfig, finetune
from edgelora.core import lora, loop
from edgelora.core.loop import Run
from edgelora.core.scaling import scaled
from tests.helpers import Rows, rows_data

# (form, rank, weight decay, tap scaling): two shapes of skip adapters and the last-layer form, raw and
# standardised; a recipe under both scalings is one stack of two models (loop.side_by_side)
CANDIDATES = [("skip", 2, 0.0, "none"), ("skip", 2, 0.0, "standard"), ("skip", 2, 0.1, "standard"),
              ("skip", 4, 0.1, "none"), ("last", 3, 0.0, "standard"), ("last", 3, 0.0, "none")]


def data():
    """Rows whose taps are far from standard (mean 1, spread 3): standardising them changes every product."""
    y0, t, labels = rows_data(n=47)
    return y0, t * 3 + 1, labels


def standard(t):
    return t.mean(axis=0), 1 / t.std(axis=0)


def spec(cfg, form, r, wd, sc):
    return dict(layout=lora.Layout(("a", "b"), (6, 4), 3, r, True), scale=1.0 if form == "last" else 2.0,
                weight_decay=wd, cfg=cfg, task="classification", form=form, tap_scaling=sc)


def runs(cfg, with_scaling=True, epochs_done=()):
    """The candidates side by side (their scalings stacked), or each alone on taps scaled beforehand."""
    if with_scaling:
        return loop.side_by_side([spec(cfg, *c) for c in CANDIDATES], epochs_done)
    return [Run(**{**spec(cfg, *c), "tap_scaling": "none"}) for c in CANDIDATES]


def outcome(run):
    return run.result.copy(), [{k: v for k, v in e.items() if k != "seconds"} for e in run.epochs], \
        run.best_epoch, run.stopped


@pytest.mark.parametrize("settings", [{}, {"lora_dropout": 0.2, "clip_norm": 0.5, "class_weights": "balanced"},
                                      {"optimizer": "sgd", "schedule": "cosine", "warmup_epochs": 1},
                                      {"patience": 2, "lr": 0.05}])
def test_runs_side_by_side_end_where_each_ends_alone(settings):
    y0, t, labels = data()
    cfg = TrainConfig(**{"epochs": 6, "batch_size": 8, "lr": 1e-2, "cv_folds": 0, "form": "skip", "tap_scaling": "none", **settings})
    split = (np.arange(37), np.arange(37, 47))               # the last 10 rows validate: they never enter a batch
    together, seen = runs(cfg), []
    assert together[0].stack is together[1].stack and together[4].stack is together[5].stack
    assert len({id(run.stack) for run in together}) == 4
    loop.fit(together, Rows(y0, t), labels, split, standardizer=standard(t), callback=seen.append)
    for c, run, alone in zip(CANDIDATES, together, runs(cfg, with_scaling=False)):
        alone.fit(Rows(y0, scaled(t, c[3], standard(t))), labels, split)   # the candidate's own pass, as before
        for got, want in zip(outcome(run), outcome(alone)):
            assert np.array_equal(got, want) if isinstance(got, np.ndarray) else got == want, c
    assert len(seen) == sum(len(run.epochs) for run in together)
    assert settings.get("patience") or {run.stopped for run in together} == {"completed"}


def test_a_run_resumed_at_a_later_epoch_waits_for_the_others():
    """A checkpoint written when candidates ran one after another (the first at epoch 3): it joins the others there."""
    y0, t, labels = data()
    cfg, split = TrainConfig(epochs=5, batch_size=8, lr=1e-2, cv_folds=0, form="skip", tap_scaling="none"), (np.arange(37), np.arange(37, 47))
    first = runs(cfg, with_scaling=False)[0]

    def stop(rec):
        if rec["epoch"] == 3:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        first.fit(Rows(y0, t), labels, split, callback=stop)   # the first candidate alone: raw taps
    resumed = runs(cfg, epochs_done=[3])        # not in its scaling twin's stack: that one starts at epoch 0
    assert resumed[0].stack is not resumed[1].stack and resumed[4].stack is resumed[5].stack
    resumed[0].restore(*first.state())
    order = []
    loop.fit(resumed, Rows(y0, t), labels, split, standardizer=standard(t),
             callback=lambda rec: order.append((rec["r"], rec["epoch"])))
    # the five others train epochs 1-3; then the resumed run (rank 2, epoch 4) trains beside them
    assert [e for _, e in order[:15]] == [1] * 5 + [2] * 5 + [3] * 5 and order[15:17] == [(2, 4), (2, 4)]
    for c, run, alone in zip(CANDIDATES, resumed, runs(cfg, with_scaling=False)):
        alone.fit(Rows(y0, scaled(t, c[3], standard(t))), labels, split)
        assert np.array_equal(run.result, alone.result) and run.best_epoch == alone.best_epoch


def test_holdout_picks_what_it_picked_when_candidates_ran_one_after_another(toy_bundle, toy_data):
    """Pinned: chosen recipe and best epoch as measured before the candidates shared batches (8 candidates: two
    forms, two weight decays, two tap scalings); the winner's adapter is that recipe fine-tuned on its own."""
    cfg = TrainConfig(val_fraction=0.2, epochs=40, batch_size=10, lr=0.05, patience=3, weight_decay="auto",
                      weight_decay_grid=(0.0, 0.1), form="auto")
    adapter, h = finetune(Backbone(toy_bundle), *toy_data, cfg)
    assert len(h.candidates) == 8 and (h.best_epoch, h.stopped) == (3, "early_stopping")
    assert h.chosen == {"form": "skip", "r": 4, "lora_alpha": 8.0, "weight_decay": 0.1, "tap_scaling": "none",
                        "epochs": 40}
    alone = dataclasses.replace(cfg, weight_decay=0.1, form="skip", tap_scaling="none")
    single, h1 = finetune(Backbone(toy_bundle), *toy_data, alone)
    assert not h1.candidates and np.array_equal(adapter.flat, single.flat)
    assert [e["val_loss"] for e in h.epochs] == [e["val_loss"] for e in h1.epochs]


@pytest.mark.parametrize("stop_at", [7, 26])
def test_a_holdout_with_stacked_scalings_resumes_bit_for_bit(toy_bundle, toy_data, tmp_path, stop_at):
    """8 candidates in 4 stacks (two tap scalings each), some stopping early: interrupted after `stop_at` epoch
    records (7: within the first shared epoch; 26: after early stops) and resumed from the checkpoint."""
    cfg = TrainConfig(val_fraction=0.2, epochs=8, batch_size=10, lr=0.05, patience=2, weight_decay="auto",
                      weight_decay_grid=(0.0, 0.1), form="auto", tap_scaling="auto")
    bb = Backbone(toy_bundle)
    reference, ref_h = finetune(bb, *toy_data, cfg)
    assert len(ref_h.candidates) == 8 and "early_stopping" in {c["stopped"] for c in ref_h.candidates}
    seen = []

    def crash(rec):
        seen.append(rec)
        if len(seen) == stop_at:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        finetune(bb, *toy_data, cfg, checkpoint_dir=tmp_path / "ck", callback=crash, checkpoint_every=("epochs", 1))
    resumed, h = finetune(bb, *toy_data, cfg, checkpoint_dir=tmp_path / "ck", resume=True)
    assert np.array_equal(resumed.flat, reference.flat) and h.candidates == ref_h.candidates
    assert [e["val_loss"] for e in h.epochs] == [e["val_loss"] for e in ref_h.epochs]

