"""Types of the CLI's flag values: a bad value is a usage error (exit 2) that names the flag."""
from __future__ import annotations

import argparse
import math

from ..files.checkpoint import parse_every


def _int_flag(text: str, ok, expected: str) -> int:
    """An integer flag value for which ok(value) holds, else a usage error naming what was expected."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, found {text!r}")
    return value


def positive_int(text: str) -> int:
    return _int_flag(text, lambda v: v >= 1, "a positive integer")


def count(text: str) -> int:
    """0 or a positive integer."""
    return _int_flag(text, lambda v: v >= 0, "0 or a positive integer")


def fold_count(text: str) -> int:
    """--cv-folds: 0 (off) or an integer >= 2."""
    return _int_flag(text, lambda v: v == 0 or v >= 2, "0 (no cross-validation) or a number of folds >= 2")


def positive_float(text: str) -> float:
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, found {text!r}")
    return value


def fraction(text: str) -> float:
    value = _float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), found {text!r}")
    return value


def rank(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', found {text!r}") from None


def interval(text: str) -> tuple[str, float] | None:
    """--checkpoint-every: N epochs, Ns seconds or auto (files/checkpoint.parse_every)."""
    try:
        return parse_every(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def decay(text: str) -> float | str:
    if text == "auto":
        return text
    value = _float(text, "or 'auto'")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0 or 'auto', found {text!r}")
    return value


def _float(text: str, alternative: str = "") -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number{' ' + alternative if alternative else ''}, "
                                         f"found {text!r}")
    return value
