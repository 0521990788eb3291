"""The recipe a personalisation session trains: the one chosen on this device, not fixed defaults.

A session warm-starts from the adapter's current version, so the adapter's shape (rank, alpha, bias) is
that version's. What else it trains:
- the current version records the recipe it was trained with (`training.chosen`: weight decay and epochs,
  chosen by cross-validation when `edgelora finetune` made it, inherited by every later session): that
  recipe, with the session's holdout picking the best epoch as before;
- otherwise (a new adapter, or a version without a usable record): what cross-validation chooses on the
  session's training samples, as `finetune` does (rank for a new adapter, tap scaling, epochs), restricted
  to what a store version must be: skip adapters a later session can warm-start, on the lab's
  normalisation statistics (the gate scores candidates on the store's cached rows), and never "no
  fine-tuning" (the gate itself compares the candidate with the version serving).
Re-running the selection at every session is not done: sessions are small and frequent, their samples a
few per class, and each selection trains every fold and candidate; the recipe chosen once on the first,
larger set carries on, like its shape.
"""
from __future__ import annotations

from dataclasses import replace

from ..files.adapter import Adapter
from ..runtime.train_config import TrainConfig


def recorded_recipe(adapter: Adapter) -> dict | None:
    """{weight_decay, epochs} the adapter was trained with (its `training.chosen`), or None if it has none."""
    chosen = (adapter.config.training or {}).get("chosen")
    if not isinstance(chosen, dict) or chosen.get("form", "skip") != "skip":
        return None
    wd, epochs = chosen.get("weight_decay"), chosen.get("epochs")
    if isinstance(wd, bool) or not isinstance(wd, (int, float)) or wd < 0:
        return None
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        return None
    return {"weight_decay": float(wd), "epochs": epochs}


def session_training(train: TrainConfig, current: Adapter | None) -> tuple[TrainConfig, str]:
    """(the settings a session trains, where they come from: "recorded" or "cross-validation")."""
    recipe = recorded_recipe(current) if current is not None else None
    if recipe is not None:
        return replace(train, **recipe, form="skip", tap_scaling="none", recalibrate="none"), "recorded"
    return replace(train, val_fraction=0.0, cv_folds=max(train.cv_folds, 2), epochs="auto", form="skip",
                   tap_scaling="none" if current is not None else "auto", identity=False,
                   recalibrate="none"), "cross-validation"
