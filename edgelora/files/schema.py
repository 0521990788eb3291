"""Strict JSON <-> dataclass conversion: every field checked, every error names file and field."""
from __future__ import annotations

import dataclasses
import functools
import math
import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints


def type_name(value: Any) -> str:
    """Short JSON-ish name of a value's type, for error messages."""
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list",
            dict: "object", type(None): "null"}.get(type(value), type(value).__name__)


def from_dict(cls: type, data: Any, where: str, optional: tuple[str, ...] | None = None):
    """Build dataclass `cls` from a parsed JSON object; unknown, missing or mistyped fields are errors.

    A field may be absent only if it has a default and (when `optional` is given) is listed there.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object, found {type_name(data)}")
    hints = _hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    extra = sorted(set(data) - set(known))
    if extra:
        raise ValueError(f"{where}: unknown field(s) {extra}; expected only {known}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if no_default or (optional is not None and f.name not in optional):
                raise ValueError(f"{where}: missing field `{f.name}`")
            continue
        kwargs[f.name] = _convert(hints[f.name], data[f.name], f"{where}: field `{f.name}`")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where}: {e}") from None


def to_dict(obj) -> dict:
    """Dataclass -> plain JSON-ready dict (tuples become lists)."""
    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        return v
    return plain(obj)


def _convert(tp, value, where: str):
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        for option in get_args(tp):
            try:
                return _convert(option, value, where)
            except ValueError:
                pass
        raise ValueError(f"{where}: expected {_describe(tp)}, found {type_name(value)} {_short(value)}")
    if origin is Literal:
        if value in get_args(tp) and type(value) in {type(a) for a in get_args(tp)}:
            return value
        raise ValueError(f"{where}: expected one of {list(get_args(tp))}, found {_short(value)}")
    if tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ValueError(f"{where}: expected a finite number, found {value}")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp in (list, dict):
        if isinstance(value, tp):
            return value
    elif origin in (list, tuple):
        if isinstance(value, list):
            (item,) = get_args(tp)[:1]
            out = [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
            return tuple(out) if origin is tuple else out
    elif origin is dict:
        if isinstance(value, dict):
            _, item = get_args(tp)
            return {k: _convert(item, v, f"{where}[{k!r}]") for k, v in value.items()}
    elif dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    else:  # pragma: no cover - a programming error in a schema
        raise AssertionError(f"unsupported schema type {tp}")
    raise ValueError(f"{where}: expected {_describe(tp)}, found {type_name(value)} {_short(value)}")


def _describe(tp) -> str:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp))
    if origin in (list, tuple):
        return f"a list of {_describe(get_args(tp)[0])}"
    if origin is dict:
        return "an object"
    if origin is Literal:
        return f"one of {list(get_args(tp))}"
    if dataclasses.is_dataclass(tp):
        return "an object"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "an object", type(None): "null"}.get(tp, str(tp))


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """The resolved field types of a dataclass (resolving the annotations' text costs ~0.5 ms: once per class)."""
    return get_type_hints(cls)


def normalize(obj) -> None:
    """Call first in a config's `__post_init__`: TypeError naming the field when a value built in Python
    has the wrong type (`TrainConfig(epochs=2.5)`, `optimizer="lbfgs"`); numpy scalars become the Python
    numbers they hold, ints in float fields become floats and lists in tuple fields tuples, so what is
    saved as JSON loads back equal. Nested dataclasses are checked by their own `__post_init__`."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            if isinstance(hints[f.name], type) and not isinstance(value, hints[f.name]):
                raise TypeError(f"`{f.name}`: expected {hints[f.name].__name__}, found {type(value).__name__}")
            continue
        try:
            object.__setattr__(obj, f.name, _convert(hints[f.name], _plain_scalars(value), f"`{f.name}`"))
        except ValueError as e:
            raise TypeError(str(e)) from None


def _plain_scalars(value):
    if isinstance(value, (list, tuple)):
        return [_plain_scalars(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain_scalars(v) for k, v in value.items()}
    return value.item() if hasattr(value, "item") and getattr(value, "ndim", None) == 0 else value


def check(condition: bool, message: str) -> None:
    """Raise ValueError(message) unless condition holds (config validation in __post_init__)."""
    if not condition:
        raise ValueError(message)

