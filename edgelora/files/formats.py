"""What every edgelora file format shares: how a digest is written and which format versions are read.

Digests are SHA-256, written in one of two forms chosen by the field's name:
    `*_sha256` (and `sha256`)    the bare 64 hex digits: the name already says the algorithm
    any other name               'sha256:<64 hex>': the value carries its algorithm (`fingerprint`,
                                 `checksum`, `backbone_fingerprint`, the cache meta's `checksum`)
A JSON document may vouch for itself with a `checksum` field: the tagged digest of the document without
it (with_checksum, check_checksum). Every JSON document carries an integer `format_version`; a reader
accepts the versions from the oldest it still reads up to its own, and refuses any other with a message
naming the file, the version found and the versions this edgelora reads.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from typing import Any

from .fileio import dumps_json
from .schema import type_name

ALGORITHM = "sha256"
PREFIX = ALGORITHM + ":"


def digest(data: bytes | os.PathLike | Iterable[bytes], tagged: bool = False) -> str:
    """SHA-256 of bytes, of a file's content read in chunks, or of a sequence of buffers hashed in turn
    (streamed, no copy): 'sha256:<hex>' if `tagged`, else '<hex>'."""
    h = hashlib.sha256()
    if isinstance(data, os.PathLike):
        with open(data, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    elif isinstance(data, (bytes, bytearray, memoryview)):
        h.update(data)
    elif isinstance(data, Iterable) and not isinstance(data, str):
        for chunk in data:
            h.update(chunk)
    else:
        raise TypeError(f"digest: expected bytes, a path object or buffers, found {type(data).__name__}")
    return PREFIX + h.hexdigest() if tagged else h.hexdigest()


def with_checksum(doc: dict) -> dict:
    """`doc` plus a `checksum` field: the tagged SHA-256 of its sorted JSON without that field."""
    body = {k: v for k, v in doc.items() if k != "checksum"}
    return {**body, "checksum": digest(dumps_json(body), tagged=True)}


def check_checksum(doc: Any, where: str, remedy: str = "") -> Any:
    """`doc` without its `checksum` field, after checking that field against the rest: a ValueError naming
    `where` if it differs. A document without the field (written before it had one) is returned as it is."""
    if not isinstance(doc, dict) or "checksum" not in doc:
        return doc
    body = {k: v for k, v in doc.items() if k != "checksum"}
    expected = with_checksum(body)["checksum"]
    if doc["checksum"] != expected:
        raise ValueError(f"{where} is corrupt or was edited: its `checksum` does not match its content "
                         f"(recorded {str(doc['checksum'])[:80]!r}, content gives {expected!r})"
                         f"{'; ' + remedy if remedy else ''}")
    return body


class NewerFormatError(ValueError):
    """A file written by a newer edgelora: never discarded as corrupt (its writer may still need it)."""


def check_version(data: Any, supported: int, where: str, oldest: int = 1, older: str = "") -> int:
    """The `format_version` of the parsed JSON object `data` (read from `where`), if this edgelora reads
    it: `oldest` <= version <= `supported`. Newer is refused with "upgrade edgelora"; older than
    `oldest` with the hint `older` (what to do with a file no longer read)."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object, found {type_name(data)}")
    if "format_version" not in data:
        raise ValueError(f"{where}: missing field `format_version`")
    version = data["format_version"]
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError(f"{where}: field `format_version`: expected an integer, found {type_name(version)} "
                         f"{str(version)[:40]}")
    reads = f"{supported}" if oldest == supported else f"{oldest} to {supported}"
    if version > supported:
        raise NewerFormatError(f"{where}: format_version {version} is newer than this edgelora supports ({reads}); "
                         f"upgrade edgelora to load it")
    if version < oldest:
        raise ValueError(f"{where}: format_version {version} is older than this edgelora reads ({reads})"
                         f"{'; ' + older if older else ''}")
    return version

