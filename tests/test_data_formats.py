"""Data files as users have them: a labelled CSV given to predict, CSV rows for a
multi-dimensional input, class names as labels in .npz and .csv."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgelora.files.bundle import BUNDLE_FORMAT_VERSION, InputSpec, Manifest, OutputSpec, TapSpec, load_manifest, write_bundle
from edgelora.cli import main
from edgelora.files.data import as_targets, load_arrays


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def write_csv(path, x, labels=None, header=None):
    lines = [",".join(header)] if header else []
    for i, row in enumerate(x):
        cells = [repr(float(v)) for v in row] + ([str(labels[i])] if labels is not None else [])
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n")


def predictions(capsys, bundle, data, out, *extra):
    code, _, err = cli(capsys, "predict", bundle, "--data", data, "--out", out, *extra)
    assert code == 0, err
    return np.load(out)


# --- item 10: predict on a labelled CSV -------------------------------------------------------------------

def test_predict_ignores_the_label_column_of_a_csv(toy_bundle, toy_data, tmp_path, capsys):
    x, y = toy_data
    write_csv(tmp_path / "plain.csv", x)
    write_csv(tmp_path / "labelled.csv", x, y)
    write_csv(tmp_path / "named.csv", x, np.array(["a", "b", "c"])[y])
    write_csv(tmp_path / "first.csv", np.column_stack([y, x]), header=["label"] + [f"f{i}" for i in range(10)])
    want = predictions(capsys, toy_bundle, tmp_path / "plain.csv", tmp_path / "p0.npy")
    for name, extra in [("labelled.csv", ()), ("named.csv", ()), ("first.csv", ("--label-column", "label")),
                        ("first.csv", ("--label-column", "0"))]:
        got = predictions(capsys, toy_bundle, tmp_path / name, tmp_path / "p1.npy", *extra)
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_error_predict_csv_of_the_wrong_width_names_the_widths(toy_bundle, toy_data, tmp_path, capsys):
    x, _ = toy_data
    write_csv(tmp_path / "wide.csv", np.column_stack([x, x[:, :3]]))
    code, _, err = cli(capsys, "predict", toy_bundle, "--data", tmp_path / "wide.csv", "--out", tmp_path / "p.npy")
    assert code == 2 and "each row holds 12 input values (label column excluded), but input `x` takes 10" in err, err


# --- item 11: CSV rows for a (1, 8) input ---------------------------------------------------------------

def conv_like_bundle(folder):
    """x (N, 1, 8) -> Flatten -> Gemm -> logits (3 classes), tapping the flattened input."""
    w = np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["flat"], axis=1), helper.make_node("Gemm", ["flat", "w"], ["logits"]),
         helper.make_node("Identity", ["flat"], ["tap0"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3]),
         helper.make_tensor_value_info("tap0", TensorProto.FLOAT, ["N", 8])], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    manifest = Manifest(format_version=BUNDLE_FORMAT_VERSION, fingerprint="sha256:" + "0" * 64,
                        inputs=(InputSpec("x", ("N", 1, 8), "float32"),), output=OutputSpec("logits", 3),
                        taps=(TapSpec("fc.input", "tap0", 8),), task="classification", classes=("a", "b", "c"))
    write_bundle(folder, model.SerializeToString(), manifest)
    return folder


def test_csv_rows_are_reshaped_to_a_multidimensional_input(tmp_path, capsys):
    bundle = conv_like_bundle(tmp_path / "b")
    x = np.random.default_rng(1).standard_normal((30, 1, 8)).astype(np.float32)
    y = np.arange(30) % 3
    np.savez(tmp_path / "d.npz", x=x, y=y)
    write_csv(tmp_path / "d.csv", x.reshape(30, 8), y)
    code, out, err = cli(capsys, "eval", bundle, "--data", tmp_path / "d.csv", "--json")
    assert code == 0, err
    code, out_npz, _ = cli(capsys, "eval", bundle, "--data", tmp_path / "d.npz", "--json")
    assert json.loads(out)["accuracy"] == json.loads(out_npz)["accuracy"] and json.loads(out)["samples"] == 30
    np.testing.assert_array_equal(predictions(capsys, bundle, tmp_path / "d.csv", tmp_path / "p.npy"),
                                  predictions(capsys, bundle, tmp_path / "d.npz", tmp_path / "q.npy"))
    write_csv(tmp_path / "short.csv", x.reshape(30, 8)[:, :7], y)
    code, _, err = cli(capsys, "eval", bundle, "--data", tmp_path / "short.csv")
    assert code == 2 and "each row holds 7 input values" in err and "takes 8 per sample (shape (1, 8))" in err, err


# --- item 12: class names as labels ---------------------------------------------------------------------

def test_class_names_as_labels_in_npz_and_csv(toy_bundle, toy_data, tmp_path, capsys):
    x, y = toy_data
    names = np.array(["a", "b", "c"])[y]
    np.savez(tmp_path / "idx.npz", x=x, y=y)
    np.savez(tmp_path / "names.npz", x=x, y=names)                      # dtype <U1
    np.savez(tmp_path / "bytes.npz", x=x, y=names.astype("S"))           # dtype |S1
    write_csv(tmp_path / "names.csv", x, names, header=[f"f{i}" for i in range(10)] + ["label"])
    write_csv(tmp_path / "noheader.csv", x, names)
    results = []
    for name in ("idx.npz", "names.npz", "bytes.npz", "names.csv", "noheader.csv"):
        code, out, err = cli(capsys, "eval", toy_bundle, "--data", tmp_path / name, "--json")
        assert code == 0, (name, err)
        r = json.loads(out)
        results.append((r["accuracy"], r["loss"], r["samples"]))
    assert all(r == pytest.approx(results[0]) for r in results), results


def test_error_unknown_class_name_names_the_array_or_column_and_the_value(toy_bundle, toy_data, tmp_path, capsys):
    x, y = toy_data
    names = np.array(["a", "b", "c"])[y].astype("<U3")
    names[7] = "dog"
    np.savez(tmp_path / "bad.npz", x=x, y=names)
    code, _, err = cli(capsys, "eval", toy_bundle, "--data", tmp_path / "bad.npz")
    assert code == 2 and "bad.npz['y']: label 'dog' (sample 7) is not a class of this bundle; expected one of " \
                         "['a', 'b', 'c']" in err, err
    write_csv(tmp_path / "bad.csv", x, names)
    code, _, err = cli(capsys, "finetune", toy_bundle, "--data", tmp_path / "bad.csv", "--out", tmp_path / "ad")
    assert code == 2 and "bad.csv label column: label 'dog' (sample 7)" in err, err
    assert not (tmp_path / "ad").exists()


def test_error_csv_names_row_column_and_value(tmp_path):
    (tmp_path / "d.csv").write_text("f0,f1,label\n1,2,a\n3,oops,b\n")
    with pytest.raises(ValueError, match=r"d.csv: row 3, column 1 \('f1'\): expected a number, found 'oops'"):
        load_arrays(tmp_path / "d.csv")
    (tmp_path / "e.csv").write_text("1,2,3\n4,5\n")
    with pytest.raises(ValueError, match=r"e.csv: row 2 has 2 values, expected 3"):
        load_arrays(tmp_path / "e.csv")


def test_class_names_for_a_regression_bundle_are_refused(tmp_path):
    from tests.helpers import mlp_bundle, random_mlp
    mlp_bundle(tmp_path / "r", random_mlp([4, 3, 2]), task="regression")
    with pytest.raises(TypeError, match="expected numeric targets, found dtype <U1"):
        as_targets(np.array(["a", "b"]), load_manifest(tmp_path / "r"), 2)
