"""The plan of a fine-tune: which candidate runs train, on which rows, for how many epochs, and how the
winner is chosen, decided once from the settings, the manifest and the data. train.py trains it; the
CLI's progress bar, History, checkpoints and the report read it rather than deriving it again.

With cross-validation (`val_fraction` 0, `cv_folds` >= 2, core/crossval.py) the plan is the one recipe it
chose, refit on every sample (or none when no fine-tuning is estimated better); with a holdout it is every
combination of the asked forms, ranks, weight decays and tap scalings, the lowest validation loss winning.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..core import crossval, lora
from ..core.budget import budget_epochs
from ..core.scaling import SCALINGS
from ..files.adapter import layout_for
from .features import FeatureSource
from .train_config import TrainConfig

RULES = ("cross-validation", "holdout", "given")   # how the winner is chosen


@dataclass(frozen=True)
class Plan:
    """What a fine-tune trains: `recipes` in order (none: no fine-tuning won cross-validation), on `rows`
    {"train", "val"} samples, the winner chosen by `rule` (RULES); `selection`: what cross-validation found
    (History.selection)."""
    recipes: tuple[crossval.Recipe, ...]
    rows: dict
    rule: str
    selection: dict = field(default_factory=dict)

    @property
    def epochs(self) -> int:
        """Epochs the runs train in all (one epoch callback each; early stopping may end a run sooner)."""
        return sum(rc.epochs for rc in self.recipes)

    def summary(self) -> dict:
        """The plan as JSON (the CLI's report)."""
        return {"rule": self.rule, "rows": self.rows, "epochs": self.epochs,
                "runs": [asdict(rc) for rc in self.recipes]}


def plan(features: FeatureSource, targets: np.ndarray, config: TrainConfig, split: tuple[np.ndarray, np.ndarray],
         init=None) -> Plan:
    """The plan of a numpy fine-tune of the rows `split` = (train_idx, val_idx); init: a warm start (Adapter)."""
    m, n_train = features.manifest, len(split[0])
    rows = {"train": int(n_train), "val": int(len(split[1]))}
    bias = init.config.bias if init is not None else config.bias
    kinds, decays, scalings = _grid(features, config, init, bias)
    if not config.cross_validates:
        epochs = budget_epochs(config.epochs, config.min_steps, n_train, config.batch_size)
        recipes = tuple(crossval.Recipe(f, sc, wd, r, epochs) for f, r in kinds for wd in decays for sc in scalings)
        return Plan(recipes, rows, "holdout" if len(recipes) > 1 else "given")
    recipe, selection = crossval.select(
        features, targets, scalings=scalings, layouts={(f, r): layout_for(m, r, bias) for f, r in kinds},
        alphas={(f, r): alpha(f, r, config, init) for f, r in kinds}, decays=decays, config=config, task=m.task,
        init_flat=None if init is None else init.flat, rule=config.cv_rule,
        # a copy per tap scaling, each also in epoch order, and one being gathered; enough rows to choose a
        # recipe (cv_rows_per_class): fewer steps on a large fine-tune set, the refit uses every sample
        max_rows=features.cv_rows(2 * len(scalings) + 1, config.cv_rows_per_class * m.num_outputs))
    return Plan(() if recipe is None else (recipe,), rows, "cross-validation", selection)


def _grid(features: FeatureSource, config: TrainConfig, init, bias: bool) -> tuple[list, list, list]:
    """The candidates asked for: [(form, rank)], weight decays and tap scalings."""
    m = features.manifest
    ranks = [init.config.r] if init is not None else (list(config.rank_grid) if config.r == "auto" else [config.r])
    decays = list(config.weight_decay_grid) if config.weight_decay == "auto" else [config.weight_decay]
    # A warm start's parameters act on raw taps; standardising needs the bias to absorb the tap means.
    # Rows read from disk per batch (features.lazy): cross-validation then runs on an evenly spaced subset
    # that fits the budget, and taps stay raw unless asked (standardising reads all).
    if init is not None or not bias or (features.lazy and config.tap_scaling == "auto"):
        scalings = ["none"]
    else:
        scalings = list(SCALINGS) if config.tap_scaling == "auto" else [config.tap_scaling]
    # a warm start keeps its own form (skip); the last-layer form has r = C and scale 1 (B = I on its tap)
    forms = ["skip"] if init is not None else (list(crossval.FORMS) if config.form == "auto" else [config.form])
    return [(f, r) for f in forms for r in (ranks if f == "skip" else [m.num_outputs])], decays, scalings


def alpha(form: str, r: int, config: TrainConfig, init) -> float:
    """lora_alpha of a run: r for the last-layer form (scale 1), a warm start's own, or the config's (2 r)."""
    if form == "last":
        return float(r)
    return float(init.config.lora_alpha) if init is not None else lora.default_alpha(r, config.lora_alpha)
