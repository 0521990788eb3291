"""The external-data files an ONNX model refers to, read from its protobuf bytes without the onnx package.

A tensor anywhere in a model (graph initializers, sparse initializers, Constant attributes, the bodies of
Loop/If/Scan, functions, training graphs) may keep its values in another file, named by the tensor's
`external_data` entry `location` (onnx.proto: TensorProto fields 13 and 14). Whoever loads the model must
know every such file before a runtime resolves it; this walks the protobuf wire format along the fields
that can hold a tensor and returns every location.
"""
from __future__ import annotations

from mmap import mmap

# message -> {field number: message it holds}; only the fields on a path to a TensorProto
_GRAPH, _NODE, _ATTR, _TENSOR, _SPARSE, _FUNCTION, _TRAINING, _ENTRY = range(8)
_FIELDS = {
    "model": {7: _GRAPH, 25: _FUNCTION, 20: _TRAINING},
    _TRAINING: {1: _GRAPH, 2: _GRAPH},
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},
    _FUNCTION: {7: _NODE},
    _NODE: {5: _ATTR},
    _ATTR: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},
    _SPARSE: {1: _TENSOR, 2: _TENSOR},
    _TENSOR: {13: _ENTRY},
}
_EXTERNAL = 1          # TensorProto.DataLocation.EXTERNAL
_MAX_DEPTH = 64        # subgraphs nest; a hostile file must not exhaust the stack


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("truncated or overlong varint")
        b = buf[i]
        value |= (b & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not b & 0x80:
            return value, i


def _fields(buf: memoryview):
    """(field number, wire type, value) of a message: an int for varints, a memoryview for bytes."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            if i + n > len(buf):
                raise ValueError(f"field {number} runs past the end of its message")
            value, i = buf[i:i + n], i + n
        elif wire in (1, 5):
            i, value = i + (8 if wire == 1 else 4), None
        else:
            raise ValueError(f"unsupported wire type {wire} in field {number}")
        if i > len(buf):
            raise ValueError(f"field {number} runs past the end of its message")
        yield number, wire, value


def _walk(buf: memoryview, kind, depth: int, found: list[str]) -> None:
    if depth > _MAX_DEPTH:
        raise ValueError(f"graphs nested more than {_MAX_DEPTH} deep")
    children, entries, external = _FIELDS[kind], [], False
    for number, wire, value in _fields(buf):
        if kind == _TENSOR and number == 14 and wire == 0:
            external = value == _EXTERNAL
        elif number in children and wire == 2:
            if children[number] == _ENTRY:
                entries.append(_entry(value))
            else:
                _walk(value, children[number], depth + 1, found)
    locations = [v for k, v in entries if k == "location"]
    if external or locations:
        if len(locations) != 1:
            raise ValueError(f"a tensor stored outside the model names {len(locations)} `location`s, expected 1")
        found.append(locations[0])


def _entry(buf: memoryview) -> tuple[str, str]:
    key = value = ""
    for number, wire, v in _fields(buf):
        if wire == 2 and number in (1, 2):
            text = bytes(v).decode("utf-8")
            key, value = (text, value) if number == 1 else (key, text)
    return key, value


def external_locations(model: bytes | memoryview | mmap) -> list[str]:
    """Every distinct external-data `location` in the ONNX model bytes (or a memory map of the file: only the
    pages holding field headers are read), in order of first use. A ValueError if
    the bytes are not a well-formed protobuf along the fields that can hold a tensor."""
    found: list[str] = []
    try:
        _walk(memoryview(model), "model", 0, found)
    except UnicodeDecodeError as e:
        raise ValueError(f"an external-data entry is not UTF-8 text ({e})") from None
    return list(dict.fromkeys(found))
