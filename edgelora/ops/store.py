"""Adapter store: named adapters, each a list of immutable versions and a `current` pointer.

    STORE/
      store.json                    {"format_version": 1}: marks the folder as a store
      .lock                         writers hold an flock on it (readers never lock)
      cache/                        the Skip-Cache shared by every adapter (one folder per backbone)
      adapters/NAME/
        current.json                {"version": 3, "checksum"}: replaced atomically (os.replace); absent = none yet
        pins.json                   {"pins": [2, 3], "checksum"}: versions protected from delete and prune
        versions/v0003/             adapter_config.json + adapter_model.safetensors + version.json (checksummed)
        data/                       the adapter's accumulated samples (edgelora.ops.personalize)

A version folder is built under a hidden temporary name and renamed into place once complete, so a
reader sees a whole version or none; versions are never modified afterwards. Switching the current
version is one atomic file replace, so a reader sees the old or the new pointer, never a mix.
"""
from __future__ import annotations

import contextlib
import functools
import threading
from pathlib import Path
from typing import Iterator

from ..files.adapter import Adapter, load_adapter
from ..files.bundle import Manifest
from ..files.fileio import FileLock, PathLike, atomic_write, dumps_json, remove_dir, remove_stale
from ..files.formats import check_checksum, check_version, with_checksum
from ..files.outputs import check_target, folder_kind
from ..files.readers import no_links_below, read_json, safe_child
from ..files.schema import to_dict
from .versions import (NAME, VERSION_DIR, VERSION_FILE, VersionInfo, check_name, dumps_info, now, read_info,
                       version_folder)

STORE_FORMAT_VERSION = 1
STORE_FILE = "store.json"
CURRENT_FILE = "current.json"
PINS_FILE = "pins.json"
STORE_KIND = folder_kind("adapter store", STORE_FILE, (".lock", "cache", "adapters"), container=True)


def _locked(method):
    """Run a writing method under the store's lock."""
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self.lock():
            return method(self, *args, **kwargs)
    return locked


class AdapterStore:
    """A folder of named, versioned adapters. Reading needs no lock; writing takes the store's lock."""

    def __init__(self, root: PathLike, create: bool = True):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"adapter store {self.root} is a file; expected a folder")
        marker = self.root / STORE_FILE
        if not marker.is_file():
            if not create:
                raise FileNotFoundError(f"adapter store not found: expected a folder with {STORE_FILE} at {self.root}")
            check_target(self.root, STORE_KIND)  # a new or empty folder: never one holding other things
            (self.root / "adapters").mkdir(parents=True, exist_ok=True)
            atomic_write(marker, dumps_json({"format_version": STORE_FORMAT_VERSION}))
        check_version(read_json(marker, "adapter store marker"), STORE_FORMAT_VERSION, str(marker))
        (self.root / "adapters").mkdir(exist_ok=True)
        self._thread_lock = threading.RLock()
        self._depth = 0

    # --- paths -------------------------------------------------------------------------------------
    @property
    def cache_dir(self) -> Path:
        """Where the Skip-Cache shared by this store's adapters lives."""
        return self.root / "cache"

    def adapter_dir(self, name: str, *parts: str) -> Path:
        """The folder of adapter `name` (or `parts` inside it), reached without following a link out of the store."""
        folder = safe_child(self.root / "adapters", check_name(name), "adapter name")
        return no_links_below(self.root, folder.joinpath(*parts), f"adapter store {self.root}")

    def version_dir(self, name: str, version: int) -> Path:
        return self.adapter_dir(name, "versions", version_folder(version))

    def pointer_path(self, name: str) -> Path:
        """The small file whose replacement publishes a version (servers stat it to notice changes)."""
        return self.adapter_dir(name, CURRENT_FILE)

    # --- reading -----------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Adapter names, sorted."""
        return sorted(p.name for p in (self.root / "adapters").iterdir()
                      if p.is_dir() and not p.name.startswith(".") and NAME.fullmatch(p.name))

    def exists(self, name: str) -> bool:
        return self.adapter_dir(name).is_dir()

    def _need(self, name: str) -> Path:
        folder = self.adapter_dir(name)
        if not folder.is_dir():
            raise FileNotFoundError(f"no adapter named {name!r} in store {self.root} (adapters: {self.names()})")
        return folder

    def version_numbers(self, name: str) -> list[int]:
        folder = self._need(name) / "versions"
        if not folder.is_dir():
            return []
        return sorted(int(m.group(1)) for p in folder.iterdir() if (m := VERSION_DIR.fullmatch(p.name)))

    def _need_version(self, name: str, version: int) -> Path:
        folder = self.version_dir(name, version)
        if not folder.is_dir():
            raise FileNotFoundError(f"adapter {name!r} has no version {version} "
                                    f"(versions: {self.version_numbers(name)})")
        return folder

    def info(self, name: str, version: int) -> VersionInfo:
        """The record of `version` (its version.json, checked against its checksum)."""
        remedy = (f"a version never changes once written: restore it from a backup, or delete the version "
                  f"(edgelora store delete {self.root} {name} --version {version} --force)")
        return read_info(self._need_version(name, version) / VERSION_FILE, remedy)

    def versions(self, name: str) -> list[VersionInfo]:
        return [self.info(name, v) for v in self.version_numbers(name)]

    def current(self, name: str) -> int | None:
        """The version being served, or None before the first one is published."""
        self._need(name)
        path = self.pointer_path(name)
        if not path.exists():
            return None
        data = self._record(path, "current pointer", {"version"})
        v = data.get("version") if isinstance(data, dict) else None
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{path}: expected {{\"version\": <positive integer>}}, found {data!r}")
        return v

    def pins(self, name: str) -> list[int]:
        self._need(name)
        path = self.adapter_dir(name, PINS_FILE)
        data = self._record(path, "pins", {"pins"}) if path.exists() else {"pins": []}
        data = data.get("pins") if isinstance(data, dict) else data   # stores before the checksum: a bare list
        if not isinstance(data, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in data):
            raise ValueError(f"{path}: expected a list of version numbers, found {data!r}")
        return sorted(data)

    def _record(self, path: Path, what: str, fields: set[str]):
        """A small JSON record of the store, checked against its `checksum` (one written before records had a
        checksum is read as it is): a changed byte is refused, naming the file."""
        name = path.parent.name
        data = check_checksum(read_json(path, what), str(path),
                              f"fix it with `edgelora store` (rollback, pin or unpin {name}) after checking "
                              f"`edgelora store list {self.root} {name}`")
        if isinstance(data, dict) and set(data) != fields:
            raise ValueError(f"{path}: {what} should hold only {sorted(fields)} and a checksum, found "
                             f"{sorted(data)[:8]}; the file is corrupt or was edited")
        return data

    def load(self, name: str, version: int | None = None, manifest: Manifest | None = None) -> Adapter:
        """The adapter of `version` (default: the current one), validated (and against `manifest`)."""
        if version is None:
            version = self.current(name)
            if version is None:
                raise FileNotFoundError(f"adapter {name!r} has no current version yet (nothing published)")
        return load_adapter(self._need_version(name, version), manifest)

    def summary(self, name: str) -> dict:
        """JSON-able description of one adapter: current, pins and every version's info."""
        return {"name": name, "current": self.current(name), "pins": self.pins(name),
                "versions": [to_dict(v) for v in self.versions(name)]}

    # --- writing (under the store lock) ------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, timeout: float = 60.0) -> Iterator[None]:
        """Exclusive writer lock on the store: an flock (released by the OS if the process dies) held
        by one thread at a time; re-entrant, so a writer may call other writing methods."""
        if not self._thread_lock.acquire(timeout=timeout):
            raise TimeoutError(f"adapter store {self.root} is busy: another thread holds its lock")
        try:
            self._depth += 1
            if self._depth > 1:
                yield
                return
            with FileLock(self.root / ".lock", f"adapter store {self.root}", timeout):
                yield
        finally:
            self._depth -= 1
            self._thread_lock.release()

    @_locked
    def add_version(self, name: str, adapter: Adapter, *, parent: int | None, samples: int,
                    status: str = "accepted", reason: str = "", metrics: dict | None = None,
                    extra: dict | None = None) -> VersionInfo:
        """Write `adapter` as the next version of `name` (created if new); does not change `current`."""
        versions = self.adapter_dir(name, "versions")
        versions.mkdir(parents=True, exist_ok=True)
        remove_stale(versions)
        number = max(self.version_numbers(name), default=0) + 1
        info = VersionInfo(version=number, parent=parent, created=now(), samples=int(samples), status=status,
                           reason=reason, metrics=metrics or {}, extra=extra or {})
        record = dumps_info(info)  # validated before anything is written
        # built beside and renamed into place: the version appears whole or not at all
        adapter.save(self.version_dir(name, number), extra={VERSION_FILE: record})
        return info

    @_locked
    def set_current(self, name: str, version: int) -> None:
        """Serve `version` from now on (one atomic file replace)."""
        self.info(name, version)  # must exist and be readable
        atomic_write(self.pointer_path(name), dumps_json(with_checksum({"version": int(version)})))

    @_locked
    def rollback(self, name: str, to: int | None = None) -> int:
        """Serve an earlier version: `to`, or by default the parent of the current one. Returns it."""
        cur = self.current(name)
        if to is None:
            if cur is None:
                raise ValueError(f"adapter {name!r} has no current version to roll back from")
            to = self.info(name, cur).parent
            if to is None:
                raise ValueError(f"adapter {name!r}: the current version v{cur} has no parent to roll back to; "
                                 f"name a version explicitly (versions: {self.version_numbers(name)})")
            if to not in self.version_numbers(name):
                raise FileNotFoundError(f"adapter {name!r}: v{cur}'s parent v{to} was deleted; name a version "
                                        f"explicitly (versions: {self.version_numbers(name)})")
        self.set_current(name, to)
        return to

    @_locked
    def pin(self, name: str, version: int, pinned: bool = True) -> list[int]:
        """Protect `version` from delete and prune (or remove that protection). Returns the pins."""
        self._need_version(name, version)
        pins = set(self.pins(name))
        pins = pins | {version} if pinned else pins - {version}
        atomic_write(self.adapter_dir(name, PINS_FILE), dumps_json(with_checksum({"pins": sorted(pins)})))
        return sorted(pins)

    @_locked
    def delete(self, name: str, version: int | None = None, force: bool = False) -> list[int]:
        """Delete one version, or the whole adapter (version None). The current version and pinned
        versions are refused unless `force`. Returns the version numbers removed."""
        folder = self._need(name)
        cur, pins = self.current(name), self.pins(name)
        if version is None:
            if not force and (cur is not None or pins):
                raise ValueError(f"adapter {name!r} is in use (current v{cur}, pinned {pins}); pass force to "
                                 f"delete it with all its versions and data")
            removed = self.version_numbers(name)
            remove_dir(folder)
            remove_stale(folder.parent)
            return removed
        self._need_version(name, version)   # not info(): a version with a damaged record can be deleted
        if version == cur and not force:
            raise ValueError(f"v{version} is the current version of {name!r}; roll back first, or pass force")
        if version in pins and not force:
            raise ValueError(f"v{version} of {name!r} is pinned; unpin it first, or pass force")
        if version == cur:
            self.pointer_path(name).unlink()  # nothing is served rather than a missing version
        if version in pins:
            self.pin(name, version, pinned=False)
        remove_dir(self.version_dir(name, version))
        return [version]

    @_locked
    def prune(self, name: str, keep: int) -> list[int]:
        """Delete all but the newest `keep` versions; the current, its parent and pinned ones always stay."""
        if not isinstance(keep, int) or keep < 1:
            raise ValueError(f"`keep` should be a positive integer, found {keep!r}")
        numbers = self.version_numbers(name)
        cur = self.current(name)
        protect = set(numbers[-keep:]) | set(self.pins(name)) | {cur}
        if cur is not None:
            protect.add(self.info(name, cur).parent)
        gone = [v for v in numbers if v not in protect]
        for v in gone:
            remove_dir(self.version_dir(name, v))
        return gone

