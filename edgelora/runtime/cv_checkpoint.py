"""Cross-validation's result in the fine-tune checkpoint: a resumed run does not cross-validate again.

Cross-validation (core/crossval.py) is most of a fine-tune's time on a small set. Its outcome - the plan
(plan.py: the recipes to train, the rows, the rule, and what was found, History.selection) - is saved in the checkpoint folder as soon as it is known,
as the `crossval` array of the checkpoint (its JSON as bytes, beside the runs' arrays: covered by the
checkpoint's checksum, files/checkpoint.py, and out of its meta so the meta stays small), and carried by
every later save. `--resume` takes it from there when the checkpoint belongs to the same run (the same
run key: backbone, settings, data, starting adapter).
"""
from __future__ import annotations

import json
import uuid
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..core.crossval import Recipe
from ..files.checkpoint import save_checkpoint
from .plan import Plan

KEY = "crossval"


def state(plan: Plan) -> dict[str, np.ndarray]:
    """A cross-validation outcome as checkpoint arrays: {KEY: its JSON (numpy numbers as plain ones) as bytes}."""
    return _encoded({"recipes": [asdict(r) for r in plan.recipes], "rows": plan.rows, "rule": plan.rule,
                     "selection": plan.selection})


def restored(saved: tuple[dict, dict] | None) -> Plan | None:
    """The outcome a loaded checkpoint (already checked to be this run's) holds, or None."""
    if saved is None or KEY not in saved[1]:
        return None
    try:
        found = json.loads(np.asarray(saved[1][KEY], np.uint8).tobytes())
        return Plan(tuple(Recipe(**r) for r in found["recipes"]), found["rows"], found["rule"], found["selection"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"checkpoint: its `{KEY}` entry is not a cross-validation outcome ({e}); delete the "
                         f"checkpoint folder to start over") from None


def with_selection(arrays: dict[str, np.ndarray], selection: dict) -> dict[str, np.ndarray]:
    """The checkpoint arrays' outcome (KEY) with its selection replaced (the deep tier's decision added)."""
    return _encoded({**json.loads(np.asarray(arrays[KEY], np.uint8).tobytes()), "selection": selection})


def _encoded(outcome: dict) -> dict[str, np.ndarray]:
    """{KEY: the outcome's JSON (numpy numbers as plain ones) as bytes}."""
    return {KEY: np.frombuffer(json.dumps(outcome, default=_plain).encode(), np.uint8)}


def save(folder: str | Path, key: dict, cv: dict[str, np.ndarray]) -> None:
    """A checkpoint holding only the outcome (no training run has started yet)."""
    save_checkpoint(folder, {"run_key": key, "session": uuid.uuid4().hex, "runs": []}, cv)


def describe(saved: tuple[dict, dict]) -> str:
    """What a loaded checkpoint holds, for the interrupt message: its finished epochs and/or cross-validation."""
    runs = saved[0].get("runs", [])
    epochs = sum(len(run.get("epochs", [])) for run in runs)
    cv = KEY in saved[1] or bool(runs and runs[0].get("found"))   # a deep refit carries its cross-validation
    if epochs:
        return "holds the last finished epoch" + (" and the cross-validation's choice (not run again)" if cv else
                                                  " (cross-validation, if any, runs again)")
    return "holds the finished cross-validation (not run again; training starts at its first epoch)"


def _plain(value):
    """numpy scalars and arrays as Python numbers and lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON: {type(value).__name__}")
