"""CSV data files: one sample per row, numeric inputs, an optional header and an optional label column.

The label column may hold class indices, regression values or class names (mapped to indices against a
bundle's `classes` by `edgelora.files.data.as_targets`). Errors name the file, the row, the column and the value.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np


def load_csv(path: Path, label_column: str | int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(inputs float32 (N, width), labels or None): labels int64 if whole numbers, float64, or str."""
    try:
        rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 text CSV file") from None
    except csv.Error as e:
        raise ValueError(f"{path}: not a readable CSV file ({e})") from None
    rows = [r for r in rows if r]
    header = rows.pop(0) if rows and _is_header(rows) else None
    if not rows:
        raise ValueError(f"{path}: no data rows")
    width = len(rows[0])
    j = None if label_column is None else _column(path, label_column, header, width)
    first = 1 + (header is not None)  # row numbers count the header, as an editor shows them
    for i, r in enumerate(rows):
        if len(r) != width:
            raise ValueError(f"{path}: row {i + first} has {len(r)} values, expected {width} (as row {first})")
        for c, v in enumerate(r):
            if c != j and not _is_number(v):
                raise ValueError(f"{path}: row {i + first}, column {_name(header, c)}: expected a number, found {v!r}")
    if j is None:
        return np.array(rows, dtype=np.float64).astype(np.float32), None
    cells = [r[j] for r in rows]
    x = np.array([r[:j] + r[j + 1:] for r in rows], dtype=np.float64).astype(np.float32)
    if not all(_is_number(v) for v in cells):
        return x, np.array([v.strip() for v in cells], dtype=str)  # class names
    y = np.array(cells, dtype=np.float64)
    if (np.abs(y) < 2**53).all() and (y == np.round(y)).all():  # whole numbers are class indices (not NaN/Inf)
        y = y.astype(np.int64)
    return x, y


def _is_header(rows: list[list[str]]) -> bool:
    """The first row is a header if some column is text there and a number in the next row (a label column
    of class names is text in every row), or, with one row only, if every cell is text."""
    if len(rows) == 1:
        return not any(_is_number(v) for v in rows[0])
    return any(not _is_number(a) and _is_number(b) for a, b in zip(rows[0], rows[1]))


def _column(path: Path, label_column: str | int, header: list[str] | None, width: int) -> int:
    if isinstance(label_column, str) and not label_column.lstrip("-").isdigit():
        if header is None or label_column not in header:
            raise ValueError(f"{path}: label column {label_column!r} not found; columns are "
                             f"{header if header is not None else f'0..{width - 1} (no header)'}")
        return header.index(label_column)
    j = int(label_column)
    if not -width <= j < width:
        raise ValueError(f"{path}: label column {j} out of range for {width} columns")
    return j % width


def _name(header: list[str] | None, c: int) -> str:
    return f"{c} ({header[c]!r})" if header is not None and c < len(header) else str(c)


def _is_number(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False
