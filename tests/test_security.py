"""Security: no pickle anywhere, no path outside its folder, no allocation a hostile header asks for."""
import ast
import io
import json
import os
import resource
import struct
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save as st_save

from edgelora import Backbone, SkipCache, TrainConfig, finetune, load_adapter
from edgelora.files.adapter import CONFIG_FILE, MAX_WEIGHTS_BYTES, WEIGHTS_FILE
from edgelora.files.bundle import MANIFEST_FILE
from edgelora.files.checkpoint import ARRAYS_FILE, META_FILE, load_checkpoint
from edgelora.files.data import MAX_DATA_BYTES, load_arrays
from edgelora.files.readers import MAX_JSON_BYTES, parse_safetensors, safe_child

REPO = Path(__file__).resolve().parents[1]
SCANNED = ("edgelora", "export", "device_bench")
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


# --- no pickle -----------------------------------------------------------------------------------------

def unsafe_calls(path: Path, explicit: bool = True) -> list[str]:
    """Imports of pickling modules, allow_pickle=True, torch.load without weights_only=True, and (with
    `explicit`) np.load without an explicit allow_pickle=False."""
    found, shown = [], path.relative_to(REPO) if path.is_relative_to(REPO) else path.name
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        where = f"{shown}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where} imports {a.name}" for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            found.append(f"{where} imports from {node.module}")
        elif isinstance(node, ast.Call):
            kw = {k.arg: k.value for k in node.keywords}
            if isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value is not False:
                found.append(f"{where} passes allow_pickle={kw['allow_pickle'].value}")
            if "allow_pickle" in kw and not isinstance(kw["allow_pickle"], ast.Constant):
                found.append(f"{where} passes a computed allow_pickle")
            name = ast.unparse(node.func)
            if name.endswith("torch.load"):
                ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                if not ok:
                    found.append(f"{where} calls {name} without weights_only=True")
            if explicit and name in ("np.load", "numpy.load") and "allow_pickle" not in kw:
                found.append(f"{where} calls {name} without allow_pickle=False")
    return found


def test_no_pickle_anywhere():
    """The device runtime and the exporter say allow_pickle=False explicitly; benchmarks may rely on numpy's
    default (False since numpy 1.16.3; edgelora needs >= 1.24) but never unpickle either."""
    files = [p for d in SCANNED for p in sorted((REPO / d).rglob("*.py"))]
    assert len(files) > 20
    problems = [f for p in files for f in unsafe_calls(p, explicit=not p.is_relative_to(REPO / "device_bench"))]
    assert problems == [], "\n".join(problems)


def test_the_scan_finds_what_it_looks_for(tmp_path):
    bad = tmp_path / "probe.py"
    bad.write_text("import pickle\nimport numpy as np\nimport torch\nnp.load('a', allow_pickle=True)\n"
                   "np.load('b')\ntorch.load('c')\ntorch.load('d', weights_only=True)\n")
    found = unsafe_calls(bad)
    assert len(found) == 4, found   # import, allow_pickle=True, np.load without allow_pickle=False, torch.load


# --- paths stay inside their folder --------------------------------------------------------------------

@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "/etc/passwd", "a\\b", "x\x00y", 7, None])
def test_safe_child_refuses_anything_but_a_plain_name(tmp_path, name):
    with pytest.raises(ValueError, match="expected a plain file name"):
        safe_child(tmp_path, name, "thing")


def test_safe_child_refuses_symlinks(tmp_path):
    (tmp_path / "outside.txt").write_text("secret")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "link").symlink_to(tmp_path / "outside.txt")
    (tmp_path / "folder" / "inner").symlink_to("link")
    for name in ("link", "inner"):
        with pytest.raises(ValueError, match="is a link"):
            safe_child(tmp_path / "folder", name, "thing")


def edit_manifest(folder, change):
    data = json.loads((folder / MANIFEST_FILE).read_text())
    change(data)
    data.pop("checksum", None)  # a hand edit: without its checksum the manifest is taken as written
    (folder / MANIFEST_FILE).write_text(json.dumps(data))


@pytest.mark.parametrize("model_file", ["/etc/passwd", "sub/backbone.onnx", "..", "../bundle/backbone.onnx"])
def test_manifest_model_file_outside_the_bundle_is_refused(toy_bundle, model_file):
    edit_manifest(toy_bundle, lambda d: d.update(model_file=model_file))
    with pytest.raises(ValueError, match="plain file name"):
        Backbone(toy_bundle)


def test_bundle_files_that_are_symlinks_are_refused(toy_bundle, tmp_path):
    target = tmp_path / "elsewhere.onnx"
    (toy_bundle / "backbone.onnx").rename(target)
    (toy_bundle / "backbone.onnx").symlink_to(target)
    with pytest.raises(ValueError, match="backbone.onnx is a link"):
        Backbone(toy_bundle)
    (toy_bundle / "backbone.onnx").unlink()
    target.rename(toy_bundle / "backbone.onnx")
    (toy_bundle / MANIFEST_FILE).rename(tmp_path / "m.json")
    (toy_bundle / MANIFEST_FILE).symlink_to(tmp_path / "m.json")
    with pytest.raises(ValueError, match=f"{MANIFEST_FILE} is a link"):
        Backbone(toy_bundle)


@pytest.mark.parametrize("fingerprint", ["sha256:" + "../" * 21 + "x", "sha256:" + "G" * 64, "md5:" + "0" * 67])
def test_a_fingerprint_must_be_hex(toy_bundle, toy_data, tmp_path, fingerprint):
    """The cache names its folder after the fingerprint: only hex may reach a path."""
    edit_manifest(toy_bundle, lambda d: d.update(fingerprint=fingerprint))
    with pytest.raises(ValueError, match="`fingerprint` should be 'sha256:' \\+ 64 hex digits"):
        Backbone(toy_bundle)


@pytest.fixture
def adapter_dir(toy_bundle, toy_data, tmp_path):
    bb = Backbone(toy_bundle)
    adapter, _ = finetune(bb, *toy_data, TrainConfig(epochs=1, batch_size=10), checkpoint_dir=tmp_path / "ckpt")
    adapter.save(tmp_path / "ad")
    return bb, tmp_path / "ad"


@pytest.mark.parametrize("name", [CONFIG_FILE, WEIGHTS_FILE])
def test_adapter_files_that_are_symlinks_are_refused(adapter_dir, tmp_path, name):
    _, folder = adapter_dir
    (folder / name).rename(tmp_path / "moved")
    (folder / name).symlink_to(tmp_path / "moved")
    with pytest.raises(ValueError, match=f"{name} is a link"):
        load_adapter(folder)


def test_adapter_backbone_fingerprint_must_be_hex(adapter_dir):
    _, folder = adapter_dir
    data = json.loads((folder / CONFIG_FILE).read_text())
    data.update(backbone_fingerprint="sha256:../../" + "0" * 58, weights_sha256="")
    (folder / CONFIG_FILE).write_text(json.dumps(data))
    with pytest.raises(ValueError, match="`backbone_fingerprint` should be 'sha256:' \\+ 64 hex digits"):
        load_adapter(folder)


@pytest.mark.parametrize("name", [META_FILE, ARRAYS_FILE])
def test_checkpoint_files_that_are_symlinks_are_refused(adapter_dir, tmp_path, name):
    folder = tmp_path / "ckpt"
    (folder / name).rename(tmp_path / "moved")
    (folder / name).symlink_to(tmp_path / "moved")
    with pytest.raises(ValueError, match=f"{name} is a link"):
        load_checkpoint(folder)


def test_cache_never_writes_through_a_symlink(toy_bundle, toy_data, tmp_path):
    cache = SkipCache(Backbone(toy_bundle), tmp_path / "c")
    cache.rows(toy_data[0][:10])
    folder = Path(cache.stats()["path"])
    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"precious" * 100)
    (folder / "values-0.bin").unlink()
    (folder / "values-0.bin").symlink_to(victim)
    with pytest.raises(ValueError, match="values-0.bin is a symbolic link"):
        SkipCache(Backbone(toy_bundle), tmp_path / "c").rows(toy_data[0])
    assert victim.read_bytes() == b"precious" * 100


# --- sizes are checked before anything is allocated ----------------------------------------------------

@pytest.fixture
def address_space_cap():
    """RLIMIT_AS at what the process uses now + 1 GiB: a gigabyte-sized allocation fails instead of
    succeeding lazily on a big machine, so each test shows the size check came first."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        used = int(f.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (used + 1024**3, hard))
    yield
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def npy_header(shape, descr="<f4") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def test_npy_declaring_10_to_the_12_elements_fails_fast_with_value_error(tmp_path, address_space_cap):
    (tmp_path / "x.npy").write_bytes(npy_header((10**12,)) + b"\0" * 64)
    t = time.perf_counter()
    with pytest.raises(ValueError, match=r"x.npy.*declares .*shape \(1000000000000,\)"):
        load_arrays(tmp_path / "x.npy", y_key=None)
    (tmp_path / "y.npy").write_bytes(npy_header((1000, 1000, 1000)) + b"\0" * 64)   # 4 GB, each dim plausible
    with pytest.raises(ValueError, match=r"y.npy: the header declares shape \(1000, 1000, 1000\) of float32 "
                                         r"\(4000000000 bytes\) but the file holds 64 bytes"):
        load_arrays(tmp_path / "y.npy", y_key=None)
    assert time.perf_counter() - t < 1.0


def test_npz_member_declaring_a_huge_array_fails_fast(tmp_path, address_space_cap):
    with zipfile.ZipFile(tmp_path / "d.npz", "w") as z:
        z.writestr("x.npy", npy_header((100_000, 100_000)) + b"\0" * 64)
        z.writestr("y.npy", npy_header((2,), "<i8") + b"\0" * 16)
    with pytest.raises(ValueError, match=r"d.npz\['x'\]: the header declares shape \(100000, 100000\)"):
        load_arrays(tmp_path / "d.npz")


def test_npz_with_object_arrays_is_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "o.npz", "w") as z:
        z.writestr("x.npy", npy_header((2,), "|O") + b"\x80\x04N." * 2)
        z.writestr("y.npy", npy_header((2,), "<i8") + b"\0" * 16)
    with pytest.raises(ValueError, match="holds Python objects.*no pickle"):
        load_arrays(tmp_path / "o.npz")


def safetensors_blob(header: dict, data: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


@pytest.mark.parametrize("header,data,message", [
    ({"a": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 4 * 10**12]}}, b"", "outside the 0 data bytes"),
    ({"a": {"dtype": "F32", "shape": [2**40], "data_offsets": [0, 8]}}, b"\0" * 8, "needs 4398046511104 bytes"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "overlapping or gapped"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8, "tensors cover 4 of 8 data bytes"),
    ({"a": {"dtype": "X9", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "dtype 'X9' is not one of"),
    ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 8]}}, b"\0" * 8, "shape should be a list of integers"),
    ({"__metadata__": {"k": 1}}, b"", "`__metadata__` should map names to strings"),
])
def test_hostile_safetensors_headers(header, data, message, address_space_cap):
    with pytest.raises(ValueError, match=message):
        parse_safetensors(safetensors_blob(header, data), "w.safetensors")
    with pytest.raises(ValueError, match="header length 18446744073709551615 exceeds"):
        parse_safetensors(struct.pack("<Q", 2**64 - 1) + b"{}", "w.safetensors")


def test_adapter_config_declaring_huge_shapes_is_refused_before_allocation(adapter_dir, address_space_cap):
    """A config (unchecked: no weights checksum) asking for 10^18 parameters, beside a small weights file."""
    bb, folder = adapter_dir
    data = json.loads((folder / CONFIG_FILE).read_text())
    data.update(r=10**9, tap_widths=[10**9] * len(data["target_taps"]), weights_sha256="")
    (folder / CONFIG_FILE).write_text(json.dumps(data))
    (folder / WEIGHTS_FILE).write_bytes(st_save({"bias": np.zeros(3, np.float32)}))
    with pytest.raises(ValueError, match="declares .* adapter parameters, the file holds 3"):
        load_adapter(folder)


@pytest.mark.parametrize("what", ["manifest", "data", "weights"])
def test_files_over_the_size_limit_are_refused_unread(adapter_dir, toy_bundle, tmp_path, what, address_space_cap):
    """Sparse files: huge on paper, nothing on disk; refused by size before a byte is read."""
    _, folder = adapter_dir
    path, limit, call = {
        "manifest": (toy_bundle / MANIFEST_FILE, MAX_JSON_BYTES, lambda: Backbone(toy_bundle)),
        "data": (tmp_path / "big.npy", MAX_DATA_BYTES, lambda: load_arrays(tmp_path / "big.npy", y_key=None)),
        "weights": (folder / WEIGHTS_FILE, MAX_WEIGHTS_BYTES, lambda: load_adapter(folder)),
    }[what]
    with open(path, "ab") as f:
        f.truncate(limit + 1)
    if what == "weights":  # get past the config's checksum of the weights, to reach the size check
        data = json.loads((folder / CONFIG_FILE).read_text())
        (folder / CONFIG_FILE).write_text(json.dumps({**data, "weights_sha256": ""}))
    with pytest.raises(ValueError, match=f"{limit + 1} bytes; .*at most {limit}|{limit + 1} bytes; the limit"):
        call()
    os.truncate(path, 0)
