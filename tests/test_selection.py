"""Choosing among cross-validated candidates: folds and their repeats, the paired rule, the identity candidate."""
import numpy as np

from edgelora.core.crossval import Recipe
from edgelora.core.selection import choose, folds, held_out, interval, repeats_for, rule_folds, summarize


def test_folds_are_contiguous_per_class_and_cover_every_sample_once():
    y = np.array([0] * 7 + [1] * 5 + [0] * 3 + [2] * 10)
    fold = folds(y, 3, "classification")
    for c in np.unique(y):
        f = fold[y == c]
        assert np.all(np.diff(f) >= 0)                       # contiguous blocks in sample order
        assert set(f) == {0, 1, 2}                           # every class in every fold
    assert np.bincount(fold).min() >= 6
    regression = folds(np.linspace(0, 1, 10), 5, "regression")
    assert regression.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_repeated_folds_hold_samples_out_in_other_company():
    """At one sample per class and fold, a repeat regroups which samples are held out together; each repeat
    still holds every sample out exactly once and keeps every class in every fold's training part."""
    y = np.repeat(np.arange(4), 5)                           # 20 samples: 4 classes x 5
    assert repeats_for(20, 0) == 4 and repeats_for(100, 0) == 1 and repeats_for(20, 2) == 2
    held = held_out(y, 5, "classification", 4)
    assert held.shape == (20, 20) and np.all(held.sum(axis=0) == 4)
    groups = {frozenset(np.flatnonzero(row)) for row in held}
    assert len(groups) > 5                                   # not the same 5 folds four times
    for row in held:
        assert set(y[~row]) == {0, 1, 2, 3}
    assert folds(y, 5, "classification", 0, 4).tolist() == folds(y, 5, "classification").tolist()
    moved = folds(np.linspace(0, 1, 20), 5, "regression", 1, 2)
    assert moved.tolist() != folds(np.linspace(0, 1, 20), 5, "regression").tolist()   # cut points move


def row(form, scaling, per_sample, loss=0.5):
    """A summarize() row of a candidate scored once per sample (one repeat, 4 folds of 5)."""
    held = np.repeat(np.eye(4, dtype=bool), 5, axis=1)
    s = np.asarray(per_sample, float)[None]
    return {"recipe": Recipe(form, scaling, 1.0, 4, 10), **summarize(s, np.full_like(s, loss), held)}


def test_paired_rule_does_not_prefer_a_worse_last_layer_form():
    """At 20 samples the folds' spread spans 25-point steps; the old rule took the last-layer form anywhere in
    that band. Paired on the same samples, a form that is wrong on 3 more samples and right on none more is
    not a tie."""
    skip = np.ones(20)
    skip[[0, 1, 2]] = 0                                      # 85 %: folds 40, 100, 100, 100 %
    last = skip.copy()
    last[[5, 10]] = 0                                        # 75 %: never right where skip is wrong
    table = [row("skip", "none", skip), row("last", "none", last)]
    assert rule_folds(table)["recipe"].form == "last"        # what cross-validation used to pick
    assert choose(table, None)[0]["recipe"].form == "skip"
    noisy = skip.copy()
    noisy[[1]], noisy[[5]] = 1, 0                            # as good, on other samples: a tie, raw taps first
    tie = [row("skip", "standard", skip), row("skip", "none", noisy)]
    assert choose(tie, None)[0]["recipe"].tap_scaling == "none"


def test_a_diverged_candidate_never_ties_with_the_best():
    """A diverged model's paired error is inf, which put it "within one error" of any best: with raw taps
    preferred among ties, a diverged raw-tap candidate beat a finite standardised one."""
    good = np.r_[np.ones(18), np.zeros(2)]
    diverged = row("skip", "none", np.full(20, -np.inf))
    assert choose([row("skip", "standard", good), diverged], None)[0]["recipe"].tap_scaling == "standard"
    only = choose([diverged], None)[0]                       # every candidate diverged: still an answer
    assert only is diverged


def test_identity_wins_when_no_adapter_is_better():
    adapter = row("skip", "none", np.r_[np.ones(14), np.zeros(6)])
    backbone = row("identity", "none", np.r_[np.ones(15), np.zeros(5)])
    best, identity = choose([adapter], backbone)
    assert identity and best is adapter                      # the best adapter is still reported
    assert not choose([adapter], None)[1]                    # identity=False: the old way
    same_worse_loss = row("identity", "none", np.r_[np.ones(14), np.zeros(6)], loss=0.9)
    assert not choose([adapter], same_worse_loss)[1]


def test_interval_counts_each_sample_once():
    lo, hi = interval(np.r_[np.ones(18), np.zeros(2)], True)
    assert 0.68 < lo < 0.71 and 0.97 < hi < 0.98             # Wilson 95 % for 18 of 20
    wide, narrow = interval(np.full(20, 0.5), True), interval(np.full(2000, 0.5), True)
    assert wide[1] - wide[0] > 5 * (narrow[1] - narrow[0])
