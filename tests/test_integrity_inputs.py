"""The bad-input catalogue: every kind of bad input gets a clear error, in Python and at the CLI.

Where each kind is tested (this file fills the gaps; it does not repeat the others):
    wrong shape / width              test_backbone (width), here (ndim), test_cli (shape mismatch)
    wrong dtype                      test_backbone (strings), here (complex, object, ragged, bool labels)
    NaN / Inf                        test_backbone, test_train, here (float32 overflow, CLI)
    labels out of range / wrong type test_train, test_cli (range), here (bool, one-hot, scalar, CLI floats)
    empty / single-class data        test_train, test_cli (single class), here (CLI empty)
    training set smaller than batch  test_train, test_cli
    missing / truncated ONNX         test_backbone, here (garbage with a matching fingerprint, CLI)
    manifest missing/extra/wrong     test_backbone, here (more wrong types, CLI)
    adapter config missing/extra/... test_adapter, here (CLI)
    newer format version             test_backbone, test_adapter, here (CLI)
    adapter from another backbone    test_adapter, here (CLI)
    absurd flag values               test_train (TrainConfig), test_cli (flags), here (wrong types)
    corrupt files                    test_integrity (flipped bytes), here (CLI: adapter, checkpoint, data)
At the CLI every one of them exits with code 2 and one line on stderr that names the problem.
"""
import hashlib
import json

import numpy as np
import pytest

from edgelora import Backbone, TrainConfig, finetune
from edgelora.files.adapter import CONFIG_FILE, WEIGHTS_FILE
from edgelora.files.bundle import MANIFEST_FILE
from edgelora.cli import main
from edgelora.files.data import as_targets, load_arrays
from edgelora.files.schema import normalize
from tests.helpers import mlp_bundle, random_mlp

FAST = TrainConfig(epochs=2, batch_size=10)


# --- Python API ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("x,message", [
    (np.ones((4, 10), np.complex64), "castable to float32, found dtype complex64"),
    (np.array([["a"] * 10] * 4), "castable to float32, found dtype <U1"),
    (np.array([None] * 40, dtype=object).reshape(4, 10), "castable to float32, found dtype object"),
    ([[1.0] * 10, [1.0] * 9], "expected an array of numbers"),
])
def test_error_x_of_the_wrong_type(toy_bundle, x, message):
    with pytest.raises(TypeError, match=message):
        Backbone(toy_bundle).run(x)


@pytest.mark.parametrize("shape", [(10,), (4, 10, 1), (4, 1, 10)])
def test_error_x_with_the_wrong_number_of_dimensions(toy_bundle, shape):
    with pytest.raises(ValueError, match=r"expected shape \(N, 10\) for input `x`, found"):
        Backbone(toy_bundle).run(np.zeros(shape, np.float32))


def test_error_values_too_large_for_float32(toy_bundle):
    x = np.zeros((4, 10))
    x[2, 3] = 1e300  # finite in float64, Inf once cast to the backbone's float32
    with pytest.raises(ValueError, match="1 sample.*NaN or Inf or values too large for float32.*row 2"):
        Backbone(toy_bundle).run(x)


@pytest.mark.parametrize("y,error,message", [
    (np.array([True, False] * 60), TypeError, "integer class indices, found booleans"),
    (np.eye(3)[np.repeat(np.arange(3), 40)], ValueError, r"1-D array of class indices, found shape \(120, 3\)"),
    (np.int64(1), ValueError, "one target per sample, found a single value"),
    ([[0], [1, 2]] * 60, TypeError, "expected an array of numbers"),
    (np.full(120, np.inf), TypeError, "integer class indices, found non-integer floats"),
])
def test_error_labels_of_the_wrong_kind(toy_bundle, toy_data, y, error, message):
    with pytest.raises(error, match=message):
        finetune(Backbone(toy_bundle), toy_data[0], y, FAST)


def test_error_regression_targets(tmp_path):
    mlp_bundle(tmp_path / "b", random_mlp([4, 6, 2]), task="regression")
    m = Backbone(tmp_path / "b").manifest
    with pytest.raises(ValueError, match=r"regression targets of shape \(5, 2\), found \(5, 3\)"):
        as_targets(np.zeros((5, 3)), m, 5)
    with pytest.raises(ValueError, match="targets contain NaN or Inf"):
        as_targets(np.full((5, 2), np.nan), m, 5)


def test_error_onnx_file_that_is_not_onnx_but_matches_its_fingerprint(toy_bundle):
    garbage = b"this is not an onnx model" * 10
    (toy_bundle / "backbone.onnx").write_bytes(garbage)
    data = json.loads((toy_bundle / MANIFEST_FILE).read_text())
    data["fingerprint"] = "sha256:" + hashlib.sha256(garbage).hexdigest()
    data.pop("checksum", None)  # a hand edit: without its checksum the manifest is taken as written
    (toy_bundle / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(ValueError, match="backbone.onnx is not a readable ONNX model"):
        Backbone(toy_bundle)


@pytest.mark.parametrize("change,message", [
    (lambda d: d.update(output=[d["output"]]), "field `output`: expected a JSON object, found list"),
    (lambda d: d.update(taps={"a": 1}), "field `taps`: expected a list of an object, found object"),
    (lambda d: d["taps"][0].update(width=0), "`width` should be a positive integer, found 0"),
    (lambda d: d["inputs"][0].update(dtype="float8"), "dtype should be one of"),
    (lambda d: d.update(classes=["a", "b"]), "`classes` should name 3 classes"),
    (lambda d: d.update(task="segmentation"), "expected one of \\['classification', 'regression'\\]"),
    (lambda d: d.update(format_version=True), "field `format_version`: expected an integer, found boolean"),
    (lambda d: d["taps"].append(dict(d["taps"][0])), "tap names should be unique"),
    (lambda d: d.update(preprocess={"x": {"mean": "0", "std": [1.0]}}), "`mean`: expected a number or a list"),
    (lambda d: d.update(preprocess={"x": {"mean": ["0"], "std": [1.0]}}), "preprocess `mean` should be a number"),
    (lambda d: d.update(preprocess={"x": {"mean": 0.0, "std": 0.0}}), "preprocess `std` should be > 0"),
    (lambda d: d.update(preprocess={"nope": {"mean": 0.0, "std": 1.0}}), "`preprocess` names unknown input"),
])
def test_error_manifest_with_wrong_types_and_values(toy_bundle, change, message):
    data = json.loads((toy_bundle / MANIFEST_FILE).read_text())
    change(data)
    (toy_bundle / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        Backbone(toy_bundle)


def test_error_corrupt_data_files(tmp_path, toy_data):
    np.savez(tmp_path / "d.npz", x=toy_data[0], y=toy_data[1])
    raw = (tmp_path / "d.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[:len(raw) // 2])
    with pytest.raises(ValueError, match="cut.npz"):
        load_arrays(tmp_path / "cut.npz")
    (tmp_path / "bad.csv").write_text("a,b,label\n1,2,0\n3,x,1\n")
    with pytest.raises(ValueError, match=r"bad.csv: row 3, column 1 \('b'\): expected a number, found 'x'"):
        load_arrays(tmp_path / "bad.csv")
    (tmp_path / "ok.csv").write_text("a,b,label\n1,2,0\n3,4,1\n")
    with pytest.raises(ValueError, match="label column 'y' not found; columns are \\['a', 'b', 'label'\\]"):
        load_arrays(tmp_path / "ok.csv", label_column="y")


# TrainConfig checks types first (schema.normalize), so none of these fail later with a KeyError, a TypeError
# without the field's name, or pass silently.
@pytest.mark.parametrize("field,value", [("epochs", 2.5), ("r", "4"), ("lr", "0.1"), ("optimizer", "lbfgs"),
                                         ("schedule", "linear"), ("val_split", "latest"), ("batch_size", True)])
def test_error_train_config_of_the_wrong_type(field, value):
    with pytest.raises(TypeError, match=f"`{field}`: expected"):
        TrainConfig(**{field: value})


@pytest.mark.parametrize("field,value,message", [
    ("epochs", 2.5, "`epochs`: expected an integer or one of \[.auto.\], found number 2.5"),
    ("optimizer", "lbfgs", "`optimizer`: expected one of \\['sgd', 'adam', 'adamw'\\], found 'lbfgs'"),
    ("batch_size", True, "`batch_size`: expected an integer, found boolean True"),
    ("weight_decay_grid", (0.1, "x"), "`weight_decay_grid`\\[1\\]: expected a number, found string"),
])
def test_normalize_names_the_field(field, value, message):
    """schema.normalize, which TrainConfig calls first (numpy scalars pass as the numbers they hold)."""
    normalize(TrainConfig(epochs=np.int64(3), lr=np.float32(0.01)))
    bad = object.__new__(TrainConfig)
    for f, v in vars(TrainConfig()).items():
        object.__setattr__(bad, f, v)
    object.__setattr__(bad, field, value)
    with pytest.raises(TypeError, match=message):
        normalize(bad)


# --- the CLI: exit code 2 and one line naming the problem ---------------------------------------------------

@pytest.fixture
def cli_files(tmp_path, toy_bundle, toy_data):
    x, y = toy_data
    np.savez(tmp_path / "train.npz", x=x, y=y)
    mlp_bundle(tmp_path / "other", random_mlp([10, 8, 8, 3], seed=7), ["a", "b", "c"])
    bb = Backbone(toy_bundle)
    adapter, _ = finetune(bb, x, y, FAST, checkpoint_dir=tmp_path / "ckpt")
    adapter.save(tmp_path / "adapter")
    finetune(Backbone(tmp_path / "other"), x, y, FAST)[0].save(tmp_path / "other_adapter")
    return tmp_path, toy_bundle


def edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def flip_last_byte(path):
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))


def cache_with_a_symlink(d, b):
    """A cache whose values file links to a file outside it."""
    main(["finetune", str(b), "--data", str(d / "train.npz"), "--out", str(d / "a2"), "--cache-dir", str(d / "c"),
          "--epochs", "1", "--batch-size", "10", "--quiet"])
    values = next((d / "c").rglob("values-0.bin"))
    values.unlink()
    values.symlink_to(d / "train.npz")


FINETUNE = ["finetune", "{b}", "--data", "{d}/train.npz", "--out", "{d}/new", "--epochs", "1", "--batch-size", "10"]
CLI_CASES = [  # (id, set-up (d, b) -> None, argv, words the one-line message must contain)
    ("x complex", lambda d, b: np.savez(d / "train.npz", x=np.ones((20, 10), np.complex64), y=np.arange(20) % 3),
     FINETUNE, "found dtype complex64"),
    ("x inf", lambda d, b: np.savez(d / "train.npz", x=np.full((20, 10), np.inf, np.float32), y=np.arange(20) % 3),
     FINETUNE, "NaN or Inf"),
    ("x empty", lambda d, b: np.savez(d / "train.npz", x=np.zeros((0, 10), np.float32), y=np.zeros(0, int)),
     FINETUNE, "no samples"),
    ("labels float", lambda d, b: np.savez(d / "train.npz", x=np.ones((20, 10), np.float32), y=np.arange(20) / 3),
     FINETUNE, "integer class indices"),
    ("labels bool", lambda d, b: np.savez(d / "train.npz", x=np.ones((20, 10), np.float32), y=np.arange(20) % 2 == 0),
     FINETUNE, "found booleans"),
    ("npz truncated", lambda d, b: (d / "train.npz").write_bytes((d / "train.npz").read_bytes()[:300]),
     FINETUNE, "train.npz"),
    ("npy huge header", lambda d, b: (d / "x.npy").write_bytes(
        b"\x93NUMPY\x01\x00v\x00" + b"{'descr': '<f4', 'fortran_order': False, 'shape': (1000000, 10), }".ljust(117)
        + b"\n"), ["predict", "{b}", "--data", "{d}/x.npy", "--out", "{d}/p.npy"], "the file holds 0 bytes"),
    ("onnx missing", lambda d, b: (b / "backbone.onnx").unlink(), FINETUNE, "ONNX backbone missing"),
    ("onnx truncated", lambda d, b: (b / "backbone.onnx").write_bytes((b / "backbone.onnx").read_bytes()[:50]),
     FINETUNE, "does not match the manifest"),
    ("manifest missing field", lambda d, b: edit_json(b / MANIFEST_FILE, lambda m: m.pop("taps")),
     FINETUNE, "missing field `taps`"),
    ("manifest extra field", lambda d, b: edit_json(b / MANIFEST_FILE, lambda m: m.update(colour="red")),
     FINETUNE, "unknown field(s) ['colour']"),
    ("manifest wrong type", lambda d, b: edit_json(b / MANIFEST_FILE, lambda m: m["output"].update(width="3")),
     FINETUNE, "expected an integer, found string"),
    ("manifest newer", lambda d, b: edit_json(b / MANIFEST_FILE, lambda m: m.update(format_version=2)),
     FINETUNE, "format_version 2 is newer"),
    ("adapter other backbone", lambda d, b: None,
     ["eval", "{b}", "--adapter", "{d}/other_adapter", "--data", "{d}/train.npz"], "belongs to another backbone"),
    ("adapter newer", lambda d, b: edit_json(d / "adapter" / CONFIG_FILE, lambda c: c.update(format_version=3)),
     ["eval", "{b}", "--adapter", "{d}/adapter", "--data", "{d}/train.npz"], "format_version 3 is newer"),
    ("adapter missing field", lambda d, b: edit_json(d / "adapter" / CONFIG_FILE, lambda c: c.pop("task")),
     ["eval", "{b}", "--adapter", "{d}/adapter", "--data", "{d}/train.npz"], "missing field `task`"),
    ("adapter flipped byte", lambda d, b: flip_last_byte(d / "adapter" / WEIGHTS_FILE),
     ["eval", "{b}", "--adapter", "{d}/adapter", "--data", "{d}/train.npz"], "adapter_model.safetensors is corrupt"),
    ("checkpoint flipped byte", lambda d, b: flip_last_byte(d / "ckpt" / "checkpoint.safetensors"),
     FINETUNE + ["--checkpoint-dir", "{d}/ckpt", "--resume"], "checkpoint.safetensors is corrupt"),
    ("cache symlink", cache_with_a_symlink, FINETUNE + ["--cache-dir", "{d}/c"], "is a symbolic link"),
    ("csv label column", lambda d, b: (d / "t.csv").write_text("1,2,3,4,5,6,7,8,9,10,0\n" * 30),
     ["finetune", "{b}", "--data", "{d}/t.csv", "--out", "{d}/new", "--label-column", "11"], "label column 11 out of"),
]


@pytest.mark.parametrize("setup,argv,words", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input_exits_2_with_one_line(cli_files, capsys, setup, argv, words):
    d, b = cli_files
    setup(d, b)
    capsys.readouterr()
    code = main([a.format(b=b, d=d) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and words in err and "Traceback" not in err, err
    assert not (d / "new").exists()   # nothing half-written where the adapter was to go


def test_error_npz_with_a_corrupt_compressed_member(tmp_path):
    import zipfile
    path = tmp_path / "d.npz"
    np.savez_compressed(path, x=np.arange(4000, dtype=np.float32).reshape(400, 10), y=np.zeros(400, int))
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("x.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    for i in range(start + 20, start + 60):          # scramble the deflate stream, keep the zip structure
        raw[i] ^= 0x5A
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="d.npz"):
        load_arrays(path)


def test_error_onnx_bytes_and_store_paths(tmp_path):
    from edgelora import AdapterStore
    from edgelora.graphs.onnx_taps import add_taps
    with pytest.raises(ValueError, match="not an ONNX model"):
        add_taps(b"definitely not protobuf \xff\xff", tmp_path / "b")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file; expected a folder"):
        AdapterStore(tmp_path / "file")
