"""Data at the boundary: load .npz/.npy/.csv and validate inputs and targets against a manifest.

The error contract, for everything edgelora reads from outside (data files and arrays here, and bundles,
adapters, checkpoints and caches elsewhere): bad input raises ValueError (bad content), TypeError (a
value of the wrong type) or FileNotFoundError (a missing file or folder), with a message naming the file,
array or field, what was expected and what was found. No other exception, crash or hang, whatever the
bytes (tests/test_fuzz_*.py); sizes are checked before anything is allocated. A corrupt Skip-Cache is not
an error: the bad rows are dropped with a warning and recomputed. OSError is left for the machine's
own failures, such as a full disk while saving. The CLI exits 2 on the three, 1 on anything else.
"""
from __future__ import annotations

import math
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .bundle import InputSpec, Manifest
from .fileio import PathLike
from .memory import Pager
from .readers import check_file

MAX_DATA_BYTES = 8 * 1024**3  # refuse files larger than this before reading them
CSV_MEMORY_FACTOR = 16         # peak memory of parsing a CSV, over its size (measured: 100 MB -> 1.5 GB)
MAX_DEFLATE_RATIO = 1032      # deflate cannot expand data more than this: a larger claim is a corrupt zip


def as_inputs(x, manifest: Manifest, where: str = "x") -> dict[str, np.ndarray]:
    """Validate model input(s) -> {input name: contiguous array in the manifest dtype}.

    `x` is one array for a single-input backbone, or a dict keyed by input name. Floating inputs accept
    any integer or float array (cast); integer inputs need integers. Shapes must match the manifest's
    per-sample dims; NaN/Inf are refused.
    """
    specs = manifest.inputs
    if not isinstance(x, dict):
        if len(specs) != 1:
            raise TypeError(f"{where}: this backbone has {len(specs)} inputs {[s.name for s in specs]}; "
                            f"pass a dict of arrays keyed by input name")
        x = {specs[0].name: x}
    missing = [s.name for s in specs if s.name not in x]
    extra = sorted(set(x) - {s.name for s in specs})
    if missing or extra:
        raise ValueError(f"{where}: expected inputs {[s.name for s in specs]}, found {sorted(x)}")
    out, n = {}, None
    for spec in specs:
        name = f"{where}[{spec.name!r}]" if len(specs) > 1 else where
        a = x[spec.name] if isinstance(x[spec.name], np.ndarray) else _array(x[spec.name], name)
        want = np.dtype(spec.dtype)
        ok = (a.dtype.kind in "iuf" and want.kind == "f") or (a.dtype.kind in "iu" and want.kind in "iu") \
            or (a.dtype.kind == "b" and want.kind == "b")
        if not ok:
            raise TypeError(f"{name}: expected numbers castable to {spec.dtype}, found dtype {a.dtype}")
        expect = tuple(spec.shape[1:])
        if a.ndim != len(expect) + 1 or any(isinstance(e, int) and e != f for e, f in zip(expect, a.shape[1:])):
            shown = "(N, " + ", ".join("?" if not isinstance(e, int) else str(e) for e in expect) + ")"
            raise ValueError(f"{name}: expected shape {shown} for input `{spec.name}`, found {a.shape}")
        if n is not None and a.shape[0] != n:
            raise ValueError(f"{name}: has {a.shape[0]} samples but the other inputs have {n}")
        n = a.shape[0]
        with np.errstate(over="ignore"):
            cast = np.ascontiguousarray(a, dtype=want)
        if cast.dtype.kind == "f" and cast.size:  # after the cast: 1e300 becomes Inf in float32
            bad = _nonfinite_rows(cast)
            if bad.any():
                raise ValueError(f"{name}: {int(bad.sum())} sample(s) contain NaN or Inf or values too large "
                                 f"for {spec.dtype} (first at row {int(np.argmax(bad))}); clean or drop them")
        out[spec.name] = cast
    if n == 0:
        raise ValueError(f"{where}: no samples (empty array)")
    return out


def _nonfinite_rows(a: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Per sample: whether any value is NaN or Inf, checked in chunks of rows (a memory-mapped file is never
    all in memory, nor is a full-size temporary)."""
    flat, pager = a.reshape(len(a), -1), Pager(a, chunk * a[:1].nbytes)
    bad = []
    for i in range(0, len(a), chunk):
        bad.append(~np.isfinite(flat[i:i + chunk]).all(axis=1))
        pager.read(i, i + chunk)
    return np.concatenate(bad)


def csv_rows(x: np.ndarray, spec: InputSpec, where: str) -> np.ndarray:
    """CSV rows (N, width) -> (N, *the input's per-sample shape), row-major, when the width matches."""
    dims = tuple(spec.shape[1:])
    if x.ndim != 2 or not all(isinstance(d, int) for d in dims):
        return x
    need = math.prod(dims)
    if x.shape[1] != need:
        raise ValueError(f"{where}: each row holds {x.shape[1]} input values (label column excluded), but input "
                         f"`{spec.name}` takes {need} per sample (shape {dims}); check the columns and --label-column")
    return x.reshape(len(x), *dims)


def _array(value, where: str) -> np.ndarray:
    """np.asarray with an error that says where (ragged nested lists cannot become an array)."""
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as e:
        raise TypeError(f"{where}: expected an array of numbers, found something numpy cannot read as one "
                        f"({' '.join(str(e).split())[:120]})") from None


def num_samples(inputs: dict[str, np.ndarray]) -> int:
    return len(next(iter(inputs.values())))


def as_targets(y, manifest: Manifest, n: int, where: str = "y") -> np.ndarray:
    """Validate targets: int64 class indices (classification) or float32 (N, C) values (regression)."""
    a = _array(y, where)
    if a.dtype.kind in "US" and manifest.task == "classification" and a.ndim == 1:
        a = class_indices(a, manifest, where)
    if a.dtype.kind not in "iufb":
        raise TypeError(f"{where}: expected numeric targets{' or class names' if manifest.task == 'classification' else ''}"
                        f", found dtype {a.dtype}")
    if a.ndim == 0:
        raise ValueError(f"{where}: expected one target per sample, found a single value {a!r}")
    if len(a) != n:
        raise ValueError(f"{where}: expected {n} targets (one per sample), found {len(a)}")
    if manifest.task == "classification":
        if a.ndim != 1:
            raise ValueError(f"{where}: expected a 1-D array of class indices, found shape {a.shape}")
        if a.dtype.kind == "f":
            if not np.isfinite(a).all() or (a != np.round(a)).any():
                raise TypeError(f"{where}: expected integer class indices, found non-integer floats")
        if a.dtype.kind == "b":
            raise TypeError(f"{where}: expected integer class indices, found booleans")
        c = manifest.num_outputs
        bad = (a < 0) | (a >= c)
        if bad.any():
            raise ValueError(f"{where}: labels must be class indices 0..{c - 1} ({', '.join(manifest.classes)}); "
                             f"found {sorted(set(a[bad].tolist()))[:5]} at row {int(np.argmax(bad))}")
        return a.astype(np.int64)
    c = manifest.num_outputs
    a = a.astype(np.float32).reshape(n, -1) if a.ndim == 1 else a.astype(np.float32)
    if a.shape != (n, c):
        raise ValueError(f"{where}: expected regression targets of shape ({n}, {c}), found {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{where}: targets contain NaN or Inf")
    return a


def class_indices(names: np.ndarray, manifest: Manifest, where: str = "y") -> np.ndarray:
    """Class names (str or bytes) -> int64 indices into the bundle's `classes`; an unknown name is refused."""
    index = {c: i for i, c in enumerate(manifest.classes)}
    text = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in names.tolist()]
    for row, v in enumerate(text):
        if v not in index:
            raise ValueError(f"{where}: label {v!r} (sample {row}) is not a class of this bundle; expected one of "
                             f"{list(manifest.classes)} or an index 0..{len(index) - 1}")
    return np.array([index[v] for v in text], dtype=np.int64)


def load_arrays(path: PathLike, x_key: str = "x", y_key: str | None = "y",
                label_column: str | int | None = -1, max_memory: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Read (x, y) from .npz (keys), .npy (x only) or .csv (numeric inputs; `label_column` is the target).
    `max_memory` (bytes): arrays stored as they are (a .npy, a .npz saved with np.savez) that need more are
    memory-mapped read-only instead of read; a file that would need more once decompressed or parsed (a
    compressed .npz, a CSV: about CSV_MEMORY_FACTOR times its size) is refused before anything is allocated."""
    path = check_file(path, "data file", MAX_DATA_BYTES)
    suffix = path.suffix.lower()
    try:
        mapped = _check_memory(path, suffix, (x_key, y_key), max_memory)
        if suffix == ".npz":  # read with zipfile + the .npy reader: np.load would guess the format from the bytes
            with zipfile.ZipFile(path) as z:
                keys = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
                if x_key not in keys or (y_key is not None and y_key not in keys):
                    want = [k for k in (x_key, y_key) if k is not None]
                    raise ValueError(f"{path}: expected array(s) {want}, found {keys}; choose keys with "
                                     f"--x-key/--y-key")
                return _read_npz_member(z, x_key, path, mapped), \
                    (_read_npz_member(z, y_key, path, mapped) if y_key is not None else None)
        if suffix == ".npy":
            with open(path, "rb") as f:
                header = _check_npy(f, path.stat().st_size, str(path))
                if mapped:
                    return _mapped(path, f.tell(), header), None
                f.seek(0)
                return _read_array(f, str(path)), None
        if suffix == ".csv":
            from .csv_data import load_csv   # the csv module: only for a CSV
            return load_csv(path, label_column if y_key is not None else None)
    except (OSError, zipfile.BadZipFile, zlib.error, EOFError, KeyError, NotImplementedError, RuntimeError,
            UnicodeDecodeError) as e:  # a zip member name that is not valid UTF-8 included
        raise ValueError(f"{path}: cannot read as {suffix} ({e}); the file is corrupt or truncated") from None
    except MemoryError:
        raise ValueError(f"{path}: not enough memory to load it; use a smaller file") from None
    raise ValueError(f"{path}: unsupported data format {suffix!r}; expected .npz, .npy or .csv")


def _check_memory(path: Path, suffix: str, keys, max_memory: int | None) -> bool:
    """Whether the arrays must be memory-mapped to stay within `max_memory`; refuses what cannot be."""
    if max_memory is None:
        return False
    stored = True
    if suffix == ".npz":
        with zipfile.ZipFile(path) as z:
            infos = {n[:-4]: z.getinfo(n) for n in z.namelist() if n.endswith(".npy")}
        chosen = [infos[k] for k in keys if k is not None and k in infos]
        need, what = sum(i.file_size for i in chosen), "its arrays take"
        stored = all(i.compress_type == zipfile.ZIP_STORED for i in chosen)
    elif suffix == ".csv":
        need, what = path.stat().st_size * CSV_MEMORY_FACTOR, f"parsing it takes about {CSV_MEMORY_FACTOR} x its size,"
    else:
        need, what = path.stat().st_size, "its array takes"
    if need > max_memory and (suffix == ".csv" or not stored):
        how = "save it as .npy once" if suffix == ".csv" else "save it uncompressed (np.savez, not np.savez_compressed)"
        raise ValueError(f"{path}: {what} {need / 2**20:.1f} MB, more than the {max_memory / 2**20:.1f} MB of memory "
                         f"allowed (--memory-budget, or the memory available); raise the budget, split the data, "
                         f"or {how}: such a file is memory-mapped, not read into memory")
    return need > max_memory


def _read_npz_member(z: zipfile.ZipFile, key: str, path: Path, mapped: bool = False) -> np.ndarray:
    """Array `key` of a .npz, after checking its .npy header against the member's size; memory-mapped in
    place when `mapped` (an uncompressed member)."""
    info = z.getinfo(key + ".npy")
    where = f"{path}['{key}']"
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise ValueError(f"{where}: unsupported zip compression {info.compress_type}; save with np.savez")
    limit = info.compress_size * (1 if info.compress_type == zipfile.ZIP_STORED else MAX_DEFLATE_RATIO) + 1024
    if info.file_size > min(limit, MAX_DATA_BYTES):
        raise ValueError(f"{where}: the zip declares {info.file_size} bytes from {info.compress_size} stored; "
                         f"the file is corrupt")
    with z.open(info) as f:
        header = _check_npy(f, info.file_size, where)
        start = f.tell()
    if mapped and info.compress_type == zipfile.ZIP_STORED:
        return _mapped(path, _member_offset(path, info) + start, header)
    with z.open(info) as f:
        return _read_array(f, where)


def _member_offset(path: Path, info: zipfile.ZipInfo) -> int:
    """Where a stored zip member's bytes begin: after its local header (30 bytes, its name, its extra field)."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise ValueError(f"{path}: the local header of {info.filename!r} is missing; the file is corrupt")
    return info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")


def _mapped(path: Path, offset: int, header: tuple[tuple, bool, np.dtype]) -> np.ndarray:
    """The array described by a checked .npy header, memory-mapped read-only at `offset` of `path`."""
    shape, fortran, dtype = header
    if math.prod(shape) == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype, "r", offset=offset, shape=shape, order="F" if fortran else "C")


def _read_array(f, where: str) -> np.ndarray:
    """np.lib.format.read_array, its own ValueErrors (a header numpy cannot build) naming the file."""
    try:
        return np.lib.format.read_array(f, allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"{where}: not a valid .npy array ({' '.join(str(e).split())[:200]})") from None


def _check_npy(f, size: int, where: str) -> tuple[tuple, bool, np.dtype]:
    """A .npy header must describe a non-object array whose bytes are exactly what the file holds; its
    (shape, fortran order, dtype), `f` left at the first byte of data."""
    try:
        version = np.lib.format.read_magic(f)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in read:
            raise ValueError(f"unsupported .npy format version {version}")
        shape, fortran, dtype = read[version](f)
    except Exception as e:  # noqa: BLE001 - numpy parses the header with ast/tokenize: SyntaxError, TokenError, ...
        raise ValueError(f"{where}: not a valid .npy array ({' '.join(str(e).split())[:200]})") from None
    if dtype.hasobject:
        raise ValueError(f"{where}: holds Python objects (dtype {dtype}); only numeric arrays are read (no pickle)")
    need = math.prod(shape) * dtype.itemsize
    have = size - f.tell()
    if any(not 0 <= d <= MAX_DATA_BYTES for d in shape):  # (0, 2**62) or (0, -1): 0 bytes, numpy refuses it
        raise ValueError(f"{where}: the header declares an impossible shape {shape}; the file is corrupt")
    if math.prod(d for d in shape if d) * dtype.itemsize > MAX_DATA_BYTES:  # (0, 2**31, 2**31): numpy's "too big"
        raise ValueError(f"{where}: the header declares shape {shape} of {dtype}, larger than the {MAX_DATA_BYTES} "
                         f"bytes edgelora reads, even if a zero dimension makes it empty; the file is corrupt")
    if need != have:
        raise ValueError(f"{where}: the header declares shape {shape} of {dtype} ({need} bytes) but the file holds "
                         f"{have} bytes of data; it is corrupt or truncated")
    return shape, fortran, dtype
