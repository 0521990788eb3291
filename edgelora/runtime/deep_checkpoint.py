"""The deep tier in the fine-tune checkpoint (files/checkpoint.py): its refit after every epoch, and in a
`--form auto` run its decision as soon as it is known, so that `--resume` never cross-validates it again.

A decision for the deep tier is saved as the refit's checkpoint at epoch 0 (the run's "tier" "deep", the
cross-validation's outcome in "found"; `resumes` finds it and the refit starts at its first epoch). A decision
against it is written into the skip checkpoint's cross-validation outcome (cv_checkpoint.py: its selection's
"deep" report), which `deep.escalate` reads back on resume and keeps the skip adapter. A deep tier that could
not run (over the memory or CPU budget, an op it lacks, diverged) is not saved: a resume checks it again (its
budget may differ).
"""
from __future__ import annotations

import uuid

from ..files.checkpoint import load_checkpoint, save_checkpoint
from . import cv_checkpoint


def resumes(folder, resume: bool) -> bool:
    """Whether `folder` holds a deep refit's checkpoint to resume: an interrupted `form` "auto" fine-tune that
    had escalated (the refit's checkpoint replaces the skip runs', and carries the tier decision)."""
    saved = load_checkpoint(folder) if folder is not None and resume else None
    return bool(saved and saved[0].get("runs") and saved[0]["runs"][0].get("tier") == "deep")


def saver(folder, key: dict, found: dict | None):
    """on_epoch for deep_loop.fit: the refit's state as a training checkpoint."""
    session = uuid.uuid4().hex

    def save(epoch: int, flat, opt, rng) -> None:
        run = {"tier": "deep", "epoch": epoch, "rng": rng.bit_generator.state, "opt_t": getattr(opt, "t", 0),
               "found": found, "epochs": [{"epoch": e} for e in range(1, epoch + 1)]}
        arrays = {"0.flat": flat, **{f"0.{k}": v for k, v in opt.buffers().items()}}
        save_checkpoint(folder, {"run_key": key, "session": session, "runs": [run]}, arrays)
    return save


def keep_decision(checkpoint: tuple | None, selection: dict, found: dict | None) -> None:
    """Save the tier decision of an auto run (module docstring); `found`: the deep refit's cross-validation
    when the deep tier won, else None. checkpoint = (folder, resume, run key), or None: nothing to save."""
    if checkpoint is None or checkpoint[0] is None:
        return
    folder, _, key = checkpoint
    if found is not None:
        run = {"tier": "deep", "epoch": 0, "found": found, "epochs": []}
        save_checkpoint(folder, {"run_key": key, "session": uuid.uuid4().hex, "runs": [run]}, {})
        return
    saved = load_checkpoint(folder)
    if saved is not None and cv_checkpoint.KEY in saved[1]:   # the skip runs' checkpoint, with their plan
        save_checkpoint(folder, saved[0], {**saved[1], **cv_checkpoint.with_selection(saved[1], selection)})
