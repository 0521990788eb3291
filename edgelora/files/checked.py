"""Checked folders: named binaries plus one JSON document that records each binary's digest.

The document (sorted, indented JSON) holds `format_version` and, under one `*_sha256` key per binary,
that binary's SHA-256; a binary may vouch for the document in turn by recording `document_digest`
(the document without those keys), so a changed byte in any file is found and the file named.
A folder is written beside the old one and swapped in (fileio.write_folder): readers see the old
folder or the new one, never a mix. Adapters, checkpoints and an adapter's samples are checked folders.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .fileio import PathLike, dumps_json, recover_dir, write_folder
from .formats import check_checksum, check_version, digest, with_checksum
from .readers import read_bounded, read_json, safe_child


@dataclass(frozen=True)
class CheckedFolder:
    """One kind of checked folder: its file names, format version and what to do when it is damaged."""
    what: str                       # "adapter": names the folder in messages
    document: str                   # the JSON document's file name
    binaries: dict[str, str]        # binary file name -> the document key holding its SHA-256
    version: int                    # the format version written, and the newest read
    oldest: int = 1                 # the oldest format version still read
    remedy: str = ""                # what to do about a damaged folder; "{folder}" is filled in
    optional: bool = False          # an empty or absent digest is not checked (files converted by hand)
    max_bytes: int = 2 * 1024**3    # the size limit of each binary
    self_checksum: bool = False     # the document carries a `checksum` of its own content (formats.with_checksum)

    def document_digest(self, doc: dict) -> str:
        """SHA-256 of `doc` without its binaries' digests: what a binary records to vouch for the document."""
        return digest(dumps_json({k: v for k, v in doc.items() if k not in self.binaries.values()}))

    def write(self, folder: PathLike, doc: dict, binaries: dict[str, bytes], extra: dict[str, bytes] | None = None,
              fill: Callable[[Path], None] | None = None) -> dict:
        """Write `binaries` and `doc` with their digests filled in as one folder swap; returns the document as
        written. `extra` files (name -> bytes) go in unchecked, and `fill(tmp)` may first add more."""
        doc = {**doc, **{key: digest(binaries[name]) for name, key in self.binaries.items()}}
        doc = with_checksum(doc) if self.self_checksum else doc
        write_folder(folder, {**(extra or {}), **binaries, self.document: dumps_json(doc)}, self.what, fill)
        return doc

    def read_document(self, folder: PathLike) -> tuple[Path, Any]:
        """(path, parsed JSON) of the document, after undoing an interrupted swap and checking its version."""
        folder = Path(folder)
        recover_dir(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{self.what} not found: expected a folder with {self.document} and "
                                    f"{' and '.join(self.binaries)} at {folder}")
        path = safe_child(folder, self.document, self.what)
        data = read_json(path, self.what)
        check_version(data, self.version, str(path), self.oldest, self._remedy(folder))
        if self.self_checksum:
            if "checksum" not in data and data["format_version"] >= self.version:
                raise ValueError(f"{path} is corrupt or was edited: it has no `checksum` field "
                                 f"(found {sorted(data)[:8]}); {self._remedy(folder)}")
            data = check_checksum(data, str(path), self._remedy(folder))
        return path, data

    def read_binary(self, folder: PathLike, doc: dict, name: str) -> bytes:
        """The bytes of binary `name`, checked against the digest that `doc` records for it."""
        path = safe_child(folder, name, self.what)
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: the {self.what} in {folder} is incomplete; "
                                    f"{self._remedy(folder)}")
        blob = read_bounded(path, self.what, self.max_bytes)
        expected = doc.get(self.binaries[name])
        if (expected or not self.optional) and digest(blob) != expected:
            raise ValueError(f"{path} is corrupt: its SHA-256 does not match the one recorded in {self.document} "
                             f"(expected {expected!r}, found {digest(blob)!r}); {self._remedy(folder)}")
        return blob

    def check_vouched(self, folder: PathLike, doc: dict, recorded: str | None, name: str) -> None:
        """Refuse a document that does not match the digest `recorded` for it in binary `name`."""
        if (recorded is not None or not self.optional) and recorded != self.document_digest(doc):
            raise ValueError(f"{Path(folder) / self.document} is corrupt or was edited: it does not match the "
                             f"checksum recorded in {name}; {self._remedy(folder)}")

    def _remedy(self, folder: PathLike) -> str:
        return self.remedy.format(folder=folder)
