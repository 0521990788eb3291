"""What a writer may replace: the one rule every edgelora output (folder or file) goes through.

An existing output path is replaced only if it is an artefact of the kind being written (an adapter
folder by an adapter, a bundle by a bundle, ...) or an empty folder. Anything else is refused with a
ValueError naming the path and what it holds, unless the caller passes `overwrite=True` (the CLI's
`--overwrite`). Even then a writer never replaces a link, a file by a folder (or the reverse), the
current folder or one above it, nor anything that is, holds or lies inside a path it must protect
(the command's own inputs and other outputs).
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .fileio import PathLike, sibling_of

_ALLOWED: contextvars.ContextVar[frozenset] = contextvars.ContextVar("edgelora_overwrite", default=frozenset())


@dataclass(frozen=True)
class Kind:
    """A kind of output: what it is called, whether it is a folder, and how to recognise an existing one."""
    what: str                                  # "adapter folder", for messages
    folder: bool                               # a folder (True) or a file
    accepts: Callable[[Path], bool]            # is this existing path an artefact of this kind?
    container: bool = False                    # written into (never replaced as a whole): no overwrite
    names: frozenset = field(default_factory=frozenset)  # folder kinds made by `folder_kind`: allowed entries


def folder_kind(what: str, marker: str | tuple[str, ...], allowed: Iterable[str] = (), *,
                container: bool = False, pattern: str | None = None) -> Kind:
    """A folder holding a marker (any of them; none needed for `()`) and nothing but the markers,
    `allowed` names or names matching `pattern`, besides edgelora's own temp and lock files."""
    markers = (marker,) if isinstance(marker, str) else marker
    names = frozenset(allowed) | frozenset(markers)
    regex = re.compile(pattern) if pattern else None

    def ok(name: str) -> bool:
        base = sibling_of(name) or name
        return base in names or bool(regex and regex.fullmatch(base))

    def accepts(path: Path) -> bool:
        entries = os.listdir(path)
        return (not markers or any(m in entries for m in markers)) and all(ok(e) for e in entries)
    return Kind(what, True, accepts, container, names)


def file_kind(what: str, test: Callable[[bytes], bool], head: int = 512) -> Kind:
    """A file recognised by its first `head` bytes."""
    def accepts(path: Path) -> bool:
        with open(path, "rb") as f:
            return test(f.read(head))
    return Kind(what, False, accepts)


@contextlib.contextmanager
def overwrite_allowed(paths: Iterable[PathLike]) -> Iterator[None]:
    """Within this block, writers may replace these paths whatever they hold (the CLI's --overwrite,
    granted after `check_target` has checked them against the command's inputs)."""
    token = _ALLOWED.set(_ALLOWED.get() | {_abs(p) for p in paths})
    try:
        yield
    finally:
        _ALLOWED.reset(token)


def check_target(path: PathLike, kind: Kind, *, overwrite: bool = False,
                 protect: Iterable[tuple[str, PathLike]] = (), flag: str = "overwrite=True") -> Path:
    """Return `path` if writing a `kind` there replaces nothing but an artefact of that kind; else
    raise ValueError saying what is there. `protect`: (label, path) pairs never to touch; `flag`: how
    the caller asks for an overwrite (named in the message; "" when it cannot)."""
    path = Path(path)
    if not str(path):
        raise ValueError(f"expected a path for the {kind.what}, found an empty string")
    here = _abs(path)
    for label, other in protect:
        there = _abs(other)
        if here == there or there.is_relative_to(here) or (here.is_relative_to(there) and Path(other).is_dir()):
            rel = "is" if here == there else "holds" if there.is_relative_to(here) else "lies inside"
            raise ValueError(f"{path} {rel} the {label} {other}; write the {kind.what} somewhere else")
    if path.is_symlink():
        raise ValueError(f"{path} is a symbolic link; expected a new path or an existing {kind.what}")
    if not kind.container and Path.cwd().resolve().is_relative_to(here):
        raise ValueError(f"{path} is the current folder or one above it; name a new {kind.what}, e.g. "
                         f"{path / 'out'}")
    if not path.exists():
        return path
    if path.is_dir() != kind.folder:
        raise ValueError(f"{path} exists and is not a folder; expected a folder path for the {kind.what}" if kind.folder
                         else f"{path} is a folder; expected a file path for the {kind.what}")
    if (kind.folder and not any(path.iterdir())) or kind.accepts(path):
        return path
    if not kind.container and (overwrite or here in _ALLOWED.get()):
        return path
    advice = "choose another path" + ("" if kind.container or not flag else f", or pass {flag} to replace it")
    raise ValueError(f"{path} holds {describe(path)}, not {_a(kind.what)}; refusing to "
                     f"{'use' if kind.container else 'replace'} it ({advice})")


def remove_own(path: PathLike, kind: Kind) -> None:
    """Delete `path` (before writing it afresh) only if it is empty or an artefact of `kind`."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    ours = not path.is_symlink() and path.is_dir() == kind.folder and \
        ((kind.folder and not any(path.iterdir())) or kind.accepts(path))
    if not ours:
        raise ValueError(f"{path} holds {describe(path)}, not {_a(kind.what)}; refusing to delete it (choose "
                         f"another output folder)")
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


def describe(path: Path) -> str:
    """What a user's path holds, in a few words: 'a file of 120 bytes', "3 entries: 'a', 'b/', 'c'"."""
    if not path.is_dir():
        return f"a file of {path.stat().st_size} bytes"
    names = sorted(e.name + ("/" if e.is_dir() else "") for e in path.iterdir())
    shown = ", ".join(repr(n) for n in names[:3]) + (", ..." if len(names) > 3 else "")
    return f"{len(names)} entr{'y' if len(names) == 1 else 'ies'} ({shown})"


def _abs(path: PathLike) -> Path:
    """The absolute path with '.', '..' and links resolved (two spellings of one place compare equal)."""
    return Path(os.path.realpath(path))


def _a(what: str) -> str:
    return ("an " if what[:1].lower() in "aeio" else "a ") + what  # an adapter, an ONNX model, a PNG
