"""An adapter's accumulated labelled samples: which session brought each one and whether it is held out.

On disk, a checked folder (edgelora.files.checked: swapped in atomically, every file's digest checked) holding
    samples.npz     input.0 .. input.{k-1} (manifest input order), y, keys (N, 16) uint8, session (N,) int32,
                    holdout (N,) bool
    sessions.json   {"format_version", "samples_sha256": SHA-256 of samples.npz, "sessions": one record per
                    session: session, date, new, duplicates, holdout, decision, version, reason; "checksum" of
                    the rest (format 2; format 1, without it, is still read)}
"""
from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..files.bundle import Manifest
from ..files.checked import CheckedFolder
from ..files.data import MAX_DATA_BYTES, as_inputs, as_targets
from ..files.fileio import PathLike, recover_dir
from ..runtime.cache import KEY_BYTES

SAMPLES_FILE = "samples.npz"
SESSIONS_FILE = "sessions.json"
SAMPLES_FORMAT_VERSION = 2
SAMPLES_FOLDER = CheckedFolder("adapter's samples", SESSIONS_FILE, {SAMPLES_FILE: "samples_sha256"},
                               SAMPLES_FORMAT_VERSION, max_bytes=MAX_DATA_BYTES, self_checksum=True,
                               remedy="restore the adapter's data folder or delete it (the adapter's versions are "
                                      "unaffected)")


@dataclass
class Samples:
    """Arrays in sample order (the order sessions arrived in, each in the order given)."""
    inputs: dict[str, np.ndarray] | None    # input name -> (N, ...); None while empty
    y: np.ndarray                           # (N,) class indices or (N, C) regression targets
    keys: np.ndarray                        # (N, 16) uint8: SkipCache sample keys
    session: np.ndarray                     # (N,) int32
    holdout: np.ndarray                     # (N,) bool
    sessions: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.y)

    @classmethod
    def empty(cls) -> "Samples":
        return cls(None, np.zeros(0, np.int64), np.zeros((0, KEY_BYTES), np.uint8), np.zeros(0, np.int32),
                   np.zeros(0, bool))

    @classmethod
    def load(cls, folder: PathLike, manifest: Manifest) -> "Samples":
        """Read and validate a data folder; an absent folder is an empty set."""
        folder = Path(folder)
        recover_dir(folder)
        if not folder.is_dir():
            return cls.empty()
        index_path, index = SAMPLES_FOLDER.read_document(folder)
        sessions = index.get("sessions")
        if not isinstance(sessions, list) or \
                not all(isinstance(s, dict) and isinstance(s.get("session"), int) for s in sessions):
            raise ValueError(f"{index_path}: expected {{format_version: {SAMPLES_FORMAT_VERSION}, samples_sha256, "
                             f"sessions: [...]}}, found {str(index)[:80]}")
        blob = SAMPLES_FOLDER.read_binary(folder, index, SAMPLES_FILE)
        path = folder / SAMPLES_FILE
        names = [s.name for s in manifest.inputs]
        try:
            with np.load(io.BytesIO(blob), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:  # pragma: no cover - checksum first
            raise ValueError(f"{path}: cannot read ({e}); the file is corrupt") from None
        want = [f"input.{i}" for i in range(len(names))] + ["y", "keys", "session", "holdout"]
        if sorted(arrays) != sorted(want):
            raise ValueError(f"{path}: expected arrays {sorted(want)}, found {sorted(arrays)}; the data belongs to "
                             f"a backbone with other inputs")
        n = len(arrays["y"])
        inputs = as_inputs({name: arrays[f"input.{i}"] for i, name in enumerate(names)}, manifest, str(path)) \
            if n else None
        keys, session, holdout = arrays["keys"], arrays["session"], arrays["holdout"]
        if keys.shape != (n, KEY_BYTES) or keys.dtype != np.uint8 or session.shape != (n,) or \
                session.dtype != np.int32 or holdout.shape != (n,) or holdout.dtype != bool:
            raise ValueError(f"{path}: expected keys ({n}, {KEY_BYTES}) uint8, session ({n},) int32, holdout ({n},) "
                             f"bool; found {keys.dtype}{keys.shape}, {session.dtype}{session.shape}, "
                             f"{holdout.dtype}{holdout.shape}")
        y = as_targets(arrays["y"], manifest, n, f"{path}['y']") if n else arrays["y"]
        return cls(inputs, y, keys, session, holdout, sessions)

    def next_session(self) -> int:
        return max((s["session"] for s in self.sessions), default=0) + 1

    def joined(self, decisions: tuple[str, ...], pending: int | None = None) -> np.ndarray:
        """Mask of samples whose session's decision is in `decisions` (session `pending`: 'pending')."""
        ok = {s["session"] for s in self.sessions if s.get("decision") in decisions}
        if pending is not None and "pending" in decisions:
            ok.add(pending)
        return np.isin(self.session, sorted(ok))

    def append(self, inputs: dict[str, np.ndarray], y: np.ndarray, keys: list[bytes], session: int,
               holdout: np.ndarray) -> "Samples":
        """A new Samples with these rows added (this one is left unchanged)."""
        k = np.frombuffer(b"".join(keys), np.uint8).reshape(len(keys), KEY_BYTES)
        if self.inputs is None:
            merged = {name: v.copy() for name, v in inputs.items()}
        else:
            for name, v in inputs.items():
                if v.shape[1:] != self.inputs[name].shape[1:]:
                    raise ValueError(f"input `{name}`: new samples have shape {v.shape[1:]} per sample, the "
                                     f"adapter's data has {self.inputs[name].shape[1:]}; they cannot be stored together")
            merged = {name: np.concatenate([self.inputs[name], v]) for name, v in inputs.items()}
        y = np.concatenate([self.y.astype(y.dtype).reshape((0,) + y.shape[1:]) if not len(self) else self.y, y])
        return Samples(merged, y, np.concatenate([self.keys, k]),
                       np.concatenate([self.session, np.full(len(keys), session, np.int32)]),
                       np.concatenate([self.holdout, np.asarray(holdout, bool)]), list(self.sessions))

    def inputs_at(self, mask: np.ndarray) -> dict[str, np.ndarray]:
        return {name: v[mask] for name, v in self.inputs.items()}

    def save(self, folder: PathLike, record: dict) -> None:
        """Write the samples plus one more session record: a new folder swapped in atomically."""
        arrays = {f"input.{i}": v for i, v in enumerate(self.inputs.values())}
        arrays.update(y=self.y, keys=self.keys, session=self.session, holdout=self.holdout)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        sessions = self.sessions + [json.loads(json.dumps(record))]
        SAMPLES_FOLDER.write(folder, {"format_version": SAMPLES_FORMAT_VERSION, "sessions": sessions},
                             {SAMPLES_FILE: buf.getvalue()})
        self.sessions = sessions
