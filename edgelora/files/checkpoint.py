"""Training checkpoints: a folder swapped in atomically after every epoch, at a cost that does not grow.

    checkpoint.json          the state: settings digests, each run's counters, the history's committed
                             length and hash chain, the SHA-256 of the arrays file (a few kB, constant)
    checkpoint.safetensors   each run's parameters and optimiser buffers; metadata `meta_sha256`
    history.jsonl            one line per finished epoch, {"run": i, "record": {...}}, only ever appended;
                             bytes beyond the committed length (a crash mid-append) are ignored

The state and the arrays form a checked folder (edgelora.files.checked). An epoch builds the new folder
beside the old one with the history hard-linked (not copied) and its new lines appended, then swaps it in, so the folder is at every instant a complete
checkpoint and epoch 3,000 costs what epoch 3 did. The first save of a run writes everything afresh.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save as st_save

from .checked import CheckedFolder
from .fileio import PathLike, recover_dir
from .formats import digest
from .outputs import check_target, folder_kind
from .readers import parse_safetensors, read_bounded, read_json, safe_child

CHECKPOINT_FORMAT_VERSION = 2  # 2: epochs in an append-only history.jsonl, separate settings digests
META_FILE = "checkpoint.json"
ARRAYS_FILE = "checkpoint.safetensors"
HISTORY_FILE = "history.jsonl"
MAX_ARRAYS_BYTES = 2 * 1024**3
MAX_HISTORY_BYTES = 1024**3
CHECKPOINT_KIND = folder_kind("checkpoint folder", (META_FILE, ARRAYS_FILE), (HISTORY_FILE,))
CHECKPOINT_FOLDER = CheckedFolder("checkpoint", META_FILE, {ARRAYS_FILE: "arrays_sha256"}, CHECKPOINT_FORMAT_VERSION,
                                  oldest=CHECKPOINT_FORMAT_VERSION, remedy="delete {folder} to start afresh",
                                  max_bytes=MAX_ARRAYS_BYTES)


def save_checkpoint(folder: PathLike, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """Save `meta` ({"run_key", "session", "runs": [state with its "epochs" list]}) and `arrays`.

    Epoch records already on disk for the same `session` are not rewritten: only new ones are appended.
    """
    folder = Path(folder)
    records = [run["epochs"] for run in meta["runs"]]
    state = {**{k: v for k, v in meta.items() if k != "runs"}, "format_version": CHECKPOINT_FORMAT_VERSION,
             "runs": [{**{k: v for k, v in run.items() if k != "epochs"}, "epochs": len(run["epochs"])}
                      for run in meta["runs"]]}
    on_disk = _committed(folder, meta.get("session"))
    done = [run["epochs"] for run in on_disk["runs"]] if on_disk else []
    fresh = on_disk is None or len(done) > len(records) or any(d > len(r) for d, r in zip(done, records))
    old = {"bytes": 0, "sha256": ""} if fresh else on_disk["history"]
    lines = _lines(records, [0] * len(records) if fresh else done + [0] * (len(records) - len(done)))
    meta = {**state, "history": {"bytes": old["bytes"] + len(lines), "sha256": _chain(old["sha256"], lines)}}
    blob = st_save({k: np.ascontiguousarray(v) for k, v in arrays.items()},
                   metadata={"meta_sha256": CHECKPOINT_FOLDER.document_digest(meta)})
    if fresh:  # a new run: the whole folder afresh (replacing only an older checkpoint)
        check_target(folder, CHECKPOINT_KIND)
        CHECKPOINT_FOLDER.write(folder, meta, {ARRAYS_FILE: blob}, extra={HISTORY_FILE: lines})
    else:      # the same run: link the history, append this epoch's lines, swap
        CHECKPOINT_FOLDER.write(folder, meta, {ARRAYS_FILE: blob},
                                fill=lambda tmp: _append(folder / HISTORY_FILE, tmp / HISTORY_FILE, old["bytes"], lines))


def load_checkpoint(folder: PathLike) -> tuple[dict, dict[str, np.ndarray]] | None:
    """(meta, arrays) of the checkpoint in `folder` (each run's "epochs" its list of records), None if
    there is none; corruption is an error naming the file."""
    folder = Path(folder)
    recover_dir(folder)
    if not safe_child(folder, META_FILE, "checkpoint").exists():
        return None
    _, meta = CHECKPOINT_FOLDER.read_document(folder)
    blob = CHECKPOINT_FOLDER.read_binary(folder, meta, ARRAYS_FILE)
    arrays, metadata = parse_safetensors(blob, str(folder / ARRAYS_FILE))
    CHECKPOINT_FOLDER.check_vouched(folder, meta, metadata.get("meta_sha256"), ARRAYS_FILE)
    meta["runs"] = _with_history(folder, meta)
    return meta, arrays


def _committed(folder: Path, session) -> dict | None:
    """The on-disk state if it was written by this same `session` (so its history can be extended)."""
    try:
        found = read_json(folder / META_FILE, "checkpoint") if session else None
    except (OSError, ValueError):
        return None
    ok = isinstance(found, dict) and found.get("format_version") == CHECKPOINT_FORMAT_VERSION and \
        found.get("session") == session and (folder / HISTORY_FILE).is_file()
    return found if ok else None


def _append(old: Path, new: Path, committed: int, lines: bytes) -> None:
    """`new` = the first `committed` bytes of `old` + `lines`: a hard link plus an append (a copy where
    the file system has no hard links). The old folder reads only its own committed prefix."""
    try:
        os.link(old, new)
    except OSError:
        shutil.copyfile(old, new)
    with open(new, "r+b") as f:
        f.truncate(committed)  # drop what a crashed append left beyond the committed length
        f.seek(committed)
        f.write(lines)
        f.flush()
        os.fsync(f.fileno())  # before the swap that commits it (replace_dir syncs the folder entries)


def _lines(records: list[list[dict]], start: list[int]) -> bytes:
    """JSON lines for the records of each run from index start[i] on."""
    return b"".join(json.dumps({"run": i, "record": rec}, sort_keys=True, allow_nan=False).encode() + b"\n"
                    for i, recs in enumerate(records) for rec in recs[start[i]:])


def _chain(previous: str, lines: bytes) -> str:
    """Hash chain over lines: h = sha256(h_prev + line), so appending never rereads the file."""
    h = previous
    for line in lines.splitlines(keepends=True):
        h = digest(h.encode() + line)
    return h


def _with_history(folder: Path, meta: dict) -> list[dict]:
    """Each run's state with its list of epoch records, read from the committed part of the history."""
    path = safe_child(folder, HISTORY_FILE, "checkpoint history")
    history, runs = meta.get("history"), meta.get("runs")
    blob = read_bounded(path, "checkpoint history", MAX_HISTORY_BYTES)
    committed = history.get("bytes") if isinstance(history, dict) else None
    if not isinstance(runs, list) or not isinstance(committed, int) or len(blob) < committed or \
            _chain("", blob[:committed]) != history.get("sha256"):
        raise ValueError(f"{path} is truncated or corrupt (it does not match {META_FILE}); delete {folder} to "
                         f"start afresh")
    epochs: list[list[dict]] = [[] for _ in runs]
    for line in blob[:committed].splitlines():
        entry = json.loads(line)
        epochs[entry["run"]].append(entry["record"])
    if [len(e) for e in epochs] != [run.get("epochs") for run in runs]:
        raise ValueError(f"{path}: expected {[run.get('epochs') for run in runs]} epochs per run, found "
                         f"{[len(e) for e in epochs]}; delete {folder} to start afresh")
    return [{**run, "epochs": e} for run, e in zip(runs, epochs)]


def check_same_run(meta: dict, key: dict, folder: PathLike) -> None:
    """Refuse to resume a checkpoint written for another run, naming what differs (data, settings, ...)."""
    found = meta.get("run_key")
    found = found if isinstance(found, dict) else {}
    differ = [what for what in key if found.get(what) != key[what]]
    if differ:
        raise ValueError(f"the checkpoint in {folder} was written for another run (different {' and '.join(differ)}); "
                         f"resume with the same {', '.join(differ)}, or delete {folder} (or run without --resume) "
                         f"to start afresh")


def parse_every(text: str | int | float | None) -> tuple[str, float] | None:
    """--checkpoint-every: '5' (every 5 epochs), '30s' (at most every 30 seconds), 'auto' or None (the default:
    saving costs at most about 10 % of the run) -> ('epochs', 5) | ('seconds', 30.0) | None."""
    if text is None or text == "auto":
        return None
    s = str(text).strip()
    try:
        value = float(s[:-1]) if s.endswith("s") else int(s)
    except ValueError:
        value = 0
    if not value > 0:
        raise ValueError(f"checkpoint interval: expected a number of epochs (5), seconds (30s) or auto, found {text!r}")
    return ("seconds", float(value)) if s.endswith("s") else ("epochs", value)


class Pacer:
    """When a training run saves its checkpoint: at the end of every run, and in between every N epochs, at most
    every N seconds, or by default once the time since the last save is at least AUTO_RATIO times what that
    save took - so saving costs about 1 / (1 + AUTO_RATIO) of the run, whatever the disk: 12 leaves room under
    10 % for the first and the last save (measured: device_bench/checkpoint_share.py)."""
    AUTO_RATIO = 12.0

    def __init__(self, every: tuple[str, float] | None = None):
        self.every, self.epochs, self.last, self.cost = every, 0, time.perf_counter(), 0.0

    def __call__(self, save, finished: bool) -> None:
        """After an epoch: `save()` if it is due (`finished`: the run's last epoch, always saved)."""
        self.epochs += 1
        since = time.perf_counter() - self.last
        kind, n = self.every or ("auto", 0)
        due = finished or (kind == "epochs" and self.epochs % n == 0) or (kind == "seconds" and since >= n) or \
            (kind == "auto" and since >= self.AUTO_RATIO * self.cost)
        if due:
            start = time.perf_counter()
            save()
            self.last = time.perf_counter()
            self.cost = self.last - start
