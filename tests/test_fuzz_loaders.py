"""Fuzzing the binary and text loaders: safetensors headers, .npy, .npz and .csv (1,000 examples each).

Only ValueError, TypeError or FileNotFoundError may escape (the contract in edgelora/files/data.py), and a
hostile header must never make edgelora allocate more than the file holds: every fuzz target runs
under an address-space limit far below what the headers declare (10^12 elements and more).
"""
import io
import json
import resource
import struct
import zipfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from edgelora.files.bundle import InputSpec, Manifest, OutputSpec, TapSpec
from edgelora.files.data import as_inputs, as_targets, load_arrays
from edgelora.files.readers import SAFETENSORS_DTYPES, parse_safetensors
from tests.test_fuzz_parsers import BYTE_EDITS, CONTRACT, FUZZ, byte_edits, no_hang, scratch  # noqa: F401

HUGE = st.sampled_from([2**31, 2**32 + 1, 10**12, 2**62, 2**63 - 1, 2**64 + 5])
DIM = st.integers(0, 6) | HUGE | st.integers(-3, -1)
SHAPE = st.lists(DIM, max_size=4)


@pytest.fixture(autouse=True)
def address_space_limit():
    """Cap this process's address space (+2 GiB over what it uses now) while a fuzz test runs, so an
    allocation a hostile header asks for fails here instead of succeeding lazily on a big machine."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        used = int(f.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (used + 2 * 1024**3, hard))
    yield
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


# --- safetensors -------------------------------------------------------------------------------------

TENSOR = st.fixed_dictionaries({
    "dtype": st.sampled_from(sorted(SAFETENSORS_DTYPES)) | st.sampled_from(["BF16", "F8_E4M3", "Q4", "", "f32"]),
    "shape": SHAPE | st.just("3") | st.lists(st.booleans(), max_size=2),
    "data_offsets": st.lists(st.integers(0, 64) | HUGE | st.integers(-5, -1), min_size=0, max_size=3),
}) | st.dictionaries(st.sampled_from(["dtype", "shape", "data_offsets", "x"]), st.integers(0, 9) | st.text(max_size=3))


@st.composite
def safetensors_blobs(draw):
    """A header (structured, valid-ish or hostile) + data, or a mutated valid file."""
    if draw(st.booleans()):
        header = draw(st.dictionaries(st.text(max_size=6), TENSOR, max_size=4))
        if draw(st.booleans()):
            header["__metadata__"] = draw(st.dictionaries(st.text(max_size=4), st.text(max_size=4) | st.integers(),
                                                          max_size=2))
        text = json.dumps(header).encode()
        n = draw(st.just(len(text)) | st.integers(0, 2**64 - 1) | st.integers(0, len(text) + 8))
        return struct.pack("<Q", n) + text + draw(st.binary(max_size=96))
    from safetensors.numpy import save
    good = save({"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.int64)}, metadata={"k": "v"})
    return byte_edits(good, draw(BYTE_EDITS))


@FUZZ
@given(blob=safetensors_blobs())
def test_fuzz_safetensors_header(blob):
    try:
        tensors, _ = parse_safetensors(blob, "fuzz.safetensors")
    except ValueError as e:
        assert "fuzz.safetensors" in str(e)
        return
    assert sum(a.nbytes for a in tensors.values()) <= len(blob)  # never more than the file holds


# --- .npy / .npz ---------------------------------------------------------------------------------------

DESCR = st.sampled_from(["<f4", "<f8", "<i8", "|u1", "|b1", "<f2", "|O", "<U3", "|S2", "<c8", "<M8[s]", "V8", "<f16"]) \
    | st.text(max_size=5) | st.just([("a", "<f4"), ("b", "<i4")]) | st.integers()


@st.composite
def npy_bytes(draw):
    """A .npy file: a valid array, or a header with a hostile shape/dtype/length, or a mutated file."""
    kind = draw(st.sampled_from(["valid", "header", "mutated"]))
    buf = io.BytesIO()
    if kind == "valid":  # any numeric array, any layout: loads, then meets the manifest's checks
        dtype = draw(st.sampled_from(["<f4", ">f8", "<f2", "<i8", "|u1", "|b1", "<c8", "<U2"]))
        a = draw(arrays(dtype, array_shapes(min_dims=0, max_dims=3, max_side=5)))
        np.save(buf, np.asfortranarray(a) if draw(st.booleans()) else a, allow_pickle=False)
        return buf.getvalue()
    np.save(buf, np.arange(12, dtype=np.float32).reshape(3, 4), allow_pickle=False)
    if kind == "mutated":
        return byte_edits(buf.getvalue(), draw(BYTE_EDITS))
    shape = draw(SHAPE.map(tuple) | st.integers() | st.text(max_size=3))
    d = {"descr": draw(DESCR), "fortran_order": draw(st.booleans() | st.integers(0, 2)), "shape": shape}
    if draw(st.integers(0, 9)) == 0:
        d = draw(st.dictionaries(st.sampled_from(["descr", "shape", "x"]), st.integers(0, 3), max_size=3))
    header = repr(d).encode("latin1", "replace")
    header += b" " * draw(st.integers(0, 20)) + b"\n"
    version = draw(st.sampled_from([(1, 0), (2, 0), (3, 0), (9, 9)]))
    size = struct.pack("<H" if version[0] == 1 else "<I", len(header) % (2**16 if version[0] == 1 else 2**32))
    return b"\x93NUMPY" + bytes(version) + size + header + draw(st.binary(max_size=64))


def check_loaded(x, y, labels: bool):
    """What the CLI does next with loaded arrays: validate them against a manifest."""
    m = Manifest(format_version=1, fingerprint="sha256:" + "0" * 64, inputs=(InputSpec("x", ("N", 4), "float32"),),
                 output=OutputSpec("logits", 3), taps=(TapSpec("t", "t", 4),), task="classification",
                 classes=("a", "b", "c"))
    try:
        inputs = as_inputs(x, m)
        if labels and y is not None:
            as_targets(y, m, len(inputs["x"]))
    except CONTRACT:
        pass


@pytest.fixture
def work(scratch):
    return scratch


def load(path, **kw):
    try:
        x, y = load_arrays(path, **kw)
    except CONTRACT as e:
        assert str(path.name) in str(e), str(e)
        return
    check_loaded(x, y, kw.get("y_key", "y") is not None)


def fuzz_binary_loader(work, suffix: str, files, y_keys) -> int:
    """Load every drawn file (bytes from `files`, written as f<i><suffix>) with each `y_keys` draw; how many ran."""
    count = [0]

    @FUZZ
    @given(data=files, y_key=y_keys)
    def run(data, y_key):
        count[0] += 1
        path = work / f"f{count[0]}{suffix}"
        path.write_bytes(data)
        load(path, y_key=y_key)
        path.unlink()
    run()
    return count[0]


def test_fuzz_npy_loader(work):
    assert fuzz_binary_loader(work, ".npy", npy_bytes(), st.just(None)) >= 1000


@st.composite
def npz_bytes(draw):
    """A zip of members (valid or hostile .npy, or not .npy at all), stored or deflated, maybe mutated."""
    buf = io.BytesIO()
    compression = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
    names = draw(st.lists(st.sampled_from(["x.npy", "y.npy", "x", "y", "z.npy", "../x.npy"]), max_size=3, unique=True))
    if draw(st.booleans()):  # half the time the arrays the loader asks for are there
        names = ["x.npy", "y.npy"] + [n for n in names if n not in ("x.npy", "y.npy")]
    with zipfile.ZipFile(buf, "w", compression) as z:
        for name in names:
            z.writestr(name, draw(npy_bytes() | st.binary(max_size=32)))
    raw = buf.getvalue()
    return byte_edits(raw, draw(BYTE_EDITS)) if draw(st.integers(0, 2)) == 0 else raw


def test_fuzz_npz_loader(work):
    assert fuzz_binary_loader(work, ".npz", npz_bytes(), st.sampled_from(["y", None])) >= 1000


def test_npz_claiming_a_huge_uncompressed_size_fails_fast(work):
    """A zip entry may claim any uncompressed size; edgelora refuses claims deflate cannot produce."""
    buf = io.BytesIO()
    np.save(buf, np.zeros(4, np.float32))
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**12,)})
    with zipfile.ZipFile(work / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", header.getvalue() + b"\0" * 64)
    with pytest.raises(ValueError, match=r"bomb.npz.*header declares .*shape \(1000000000000,\)"):
        load_arrays(work / "bomb.npz", y_key=None)


# --- .csv ----------------------------------------------------------------------------------------------

CELL = st.sampled_from(["1", "-2.5", "0", "3", "nan", "inf", "-inf", "1e999", "1_0", " 4 ", "", "x", "\x00", '"5"',
                        "0x10", "١", "1e-400", "NaN", "+7"]) | st.text(max_size=4)


@st.composite
def csv_text(draw):
    if draw(st.booleans()):
        return draw(st.text(max_size=200))
    width = draw(st.integers(1, 5))
    rows = draw(st.lists(st.lists(CELL, min_size=width, max_size=width), max_size=8))
    if draw(st.booleans()):
        rows.insert(0, [f"c{i}" for i in range(width)])
    text = "\n".join(",".join(r) for r in rows)
    if draw(st.integers(0, 9)) == 0:
        text += "," + "9" * draw(st.integers(1, 200_000))  # a field over csv's size limit
    return text


def test_fuzz_csv_loader(work):
    count = [0]

    @FUZZ
    @given(text=csv_text(), column=st.sampled_from([-1, 0, 2, 99, "-1", "c1", "label", "x", None]),
           encoding=st.sampled_from(["utf-8", "utf-16", "latin1"]))
    def run(text, column, encoding):
        count[0] += 1
        path = work / f"f{count[0]}.csv"
        path.write_bytes(text.encode(encoding, "replace"))
        load(path, label_column=column, y_key=None if column is None else "y")
        path.unlink()
    run()
    assert count[0] >= 1000


def test_npy_header_with_a_zero_dimension_and_an_absurd_shape_names_the_file(work):
    """(0, 2**31, 2**31) holds no bytes, yet numpy cannot build it ("array is too big"): the error names the file."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (0, 2**31, 2**31)})
    (work / "absurd.npy").write_bytes(header.getvalue())
    with pytest.raises(ValueError, match=r"absurd.npy: the header declares shape \(0, 2147483648, 2147483648\)"):
        load_arrays(work / "absurd.npy", y_key=None)


def test_npz_member_name_that_is_not_utf8_names_the_file(work):
    """A zip entry flagged UTF-8 whose name is not (found by hypothesis on aarch64): a ValueError naming the
    file, not a bare UnicodeDecodeError."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(zipfile.ZipInfo("x.npy"), b"abc")
    raw = bytearray(buf.getvalue())
    for i in [i for i in range(len(raw)) if raw[i:i + 5] == b"x.npy"]:
        raw[i] = 0xFF                                     # the name's first byte, in both headers
    raw[raw.find(b"PK\x03\x04") + 7] |= 0x08              # general-purpose flag bit 11: UTF-8 names
    raw[raw.find(b"PK\x01\x02") + 9] |= 0x08
    path = work / "names.npz"
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="names.npz: cannot read as .npz") as e:
        load_arrays(path)
    assert type(e.value) is ValueError
