"""A stored adapter's name and versions: the name rule, version numbers and their folders, and the
record written once with each version (`version.json`, which carries a checksum of its own content)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from ..files.fileio import dumps_json
from ..files.formats import check_checksum, with_checksum
from ..files.readers import read_json
from ..files.schema import from_dict, to_dict

VERSION_FILE = "version.json"
MAX_NAME = 64
NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
VERSION_DIR = re.compile(r"v(\d{4,})")  # a version's folder: v0003 (version_folder)


def check_name(name: str) -> str:
    """Return `name` if it is a valid adapter name, else raise a ValueError that says why."""
    if not isinstance(name, str):
        raise TypeError(f"adapter name should be a string, found {type(name).__name__}")
    if not 1 <= len(name) <= MAX_NAME or not NAME.fullmatch(name):
        raise ValueError(f"adapter name {name!r} is not allowed: expected 1 to {MAX_NAME} characters from "
                         f"A-Z a-z 0-9 . _ - not starting with a dot (e.g. 'user-42' or 'fan_3')")
    return name


def parse_version(text: str | int) -> int:
    """3, '3' or 'v3' -> 3."""
    s = str(text).strip()
    s = s[1:] if s[:1] in ("v", "V") else s
    if not s.isdigit() or int(s) < 1:
        raise ValueError(f"expected a version number such as 3 or v3, found {text!r}")
    return int(s)


def version_folder(version: int) -> str:
    """The folder name of a version: 3 -> 'v0003'."""
    return f"v{version:04d}"


@dataclass(frozen=True)
class VersionInfo:
    """What a version is: written once into its folder's version.json, never changed."""
    version: int                                   # 1, 2, ... per adapter
    parent: int | None                             # the version it was warm-started from (None: from scratch)
    created: str                                   # ISO-8601 UTC time of writing
    samples: int                                   # samples it was trained on
    status: Literal["accepted", "rejected"] = "accepted"  # the holdout gate's decision when it was made
    reason: str = ""                               # why (the gate's message)
    metrics: dict = field(default_factory=dict)    # holdout metrics of this version (and of what it was compared to)
    extra: dict = field(default_factory=dict)      # anything else worth keeping (training summary, session id)


def now() -> str:
    """The current UTC time as ISO-8601 text, to the second (VersionInfo.created)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def dumps_info(info: VersionInfo) -> bytes:
    """The bytes of a version.json: the record, validated, and its `checksum` (a later edit is found)."""
    doc = to_dict(info)
    from_dict(VersionInfo, doc, "version info")
    return dumps_json(with_checksum(doc))


def read_info(path: Path, remedy: str = "") -> VersionInfo:
    """The record in version.json `path`, checked against its checksum (one written without is read as is)."""
    return from_dict(VersionInfo, check_checksum(read_json(path, "version info"), str(path), remedy), str(path))
