"""`edgelora demo`: the shipped digits backbone, the scanner shift, the before/after report and its figure."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgelora import Backbone, load_manifest
from edgelora.files.bundle import verify_bundle
from edgelora.cli import demo, main, make_demo
from edgelora.cli.demo import BUNDLE
from tests.helpers import BackboneCounter
from tests.test_train import count_checks_and_hashes

pytest.importorskip("sklearn", reason="the demo reads scikit-learn's digits (from the clone: pip install -e "
                                      "'.[demo]', or ./run test)")


def demo_json(capsys, *argv) -> dict:
    code = main(["demo", "--json", *map(str, argv)])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def test_shipped_bundle_is_valid_and_small():
    manifest = verify_bundle(BUNDLE)
    assert manifest.task == "classification" and manifest.classes == tuple("0123456789")
    assert manifest.tap_widths == (64, 64, 32)
    assert sum(p.stat().st_size for p in BUNDLE.iterdir()) < 100_000


def test_demo_shows_a_clear_gain_and_writes_its_figure(capsys, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    counters = []

    def counted_backbone(*args, **kwargs):
        bb = Backbone(*args, **kwargs)
        counters.append(BackboneCounter(bb))
        return bb
    monkeypatch.setattr(demo, "Backbone", counted_backbone)
    r = demo_json(capsys, "--png", tmp_path / "story.png")
    a = r["accuracy"]
    print(f"demo: lab {a['lab']:.3f}, before {a['before']:.3f}, after {a['after']:.3f}, {r['seconds']}")
    assert a["lab"] >= 0.85 and a["before"] <= 0.6, "the shift must really break the base model"
    assert a["after"] - a["before"] >= 0.25, "Skip2-LoRA must fix most of it"
    assert r["cache"]["misses"] == 400 and r["cache"]["hits"] == 0 and r["backbone_passes"] == 400
    n = {k: len(y) for k, (_, y) in demo.demo_data.splits().items()}
    assert counters[0].samples == n["lab_test"] + 2 * n["test"] + 400   # three evaluations; each scan once
    assert r["seconds"]["total"] < 60 and r["peak_rss_bytes"] > 0
    # the curve: cross-validated accuracy without an adapter (epoch 0) and after 1/4, 1/2 and all epochs
    assert [c["epoch"] for c in r["curve"]] == [0, 15, 30, 60] and r["chosen"]["epochs"] in (15, 30, 60)
    cv = r["cross_validation"]
    assert cv["folds"] == 5 and r["curve"][0]["cv_accuracy"] == cv["no_finetune"]["score"]
    assert cv["chosen"]["score"] > cv["no_finetune"]["score"] + 0.25 and cv["helps"]
    png = tmp_path / "story.png"
    assert r["png"] == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_demo_checks_and_hashes_each_fine_tune_scan_once(capsys, monkeypatch):
    counts = count_checks_and_hashes(monkeypatch)
    r = demo_json(capsys, "--no-plot", "--epochs", "4")
    # the 400 scans: one check, one hash each; the three evaluations (lab, before, after) check their own sets
    assert counts == {"as_inputs": 4, "as_targets": 4, "hashed": 400} and r["samples"]["finetune"] == 400


def test_demo_text_report(capsys, tmp_path):
    code = main(["demo", "--no-plot", "--epochs", "20", "--weight-decay", "0.1"])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    for words in ("lab scanner", "before", "after", "cache fill", "training", "misses", "hits", "peak RSS"):
        assert words in out, words


def test_demo_saves_its_data_for_the_cli_quick_start(capsys, tmp_path):
    r = demo_json(capsys, "--no-plot", "--epochs", "5", "--save-data", tmp_path / "files")
    assert main(["eval", r["saved_data"]["bundle"], "--data", r["saved_data"]["test"], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == r["accuracy"]["before"]
    with np.load(r["saved_data"]["finetune"]) as z:
        assert z["x"].shape == (400, 64) and z["y"].shape == (400,)


def test_demo_without_matplotlib_still_reports(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.delitem(sys.modules, "edgelora.cli.demo_plot", raising=False)
    r = demo_json(capsys, "--png", tmp_path / "x.png", "--epochs", "5")
    assert r["png"] is None and "pip install -e '.[demo]'" in r["png_note"]
    assert not (tmp_path / "x.png").exists()


def test_error_demo_without_scikit_learn_says_how_to_install(capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sklearn" else real(name, *a))
    code = main(["demo", "--no-plot"])
    _, err = capsys.readouterr()
    assert code == 1 and len(err.strip().splitlines()) == 1 and "pip install -e '.[demo]'" in err


def test_error_demo_bad_flags(capsys, tmp_path):
    for argv in (["--epochs", "0"], ["--rank", "-2"], ["--png", str(tmp_path / "no" / "x.png")]):
        code = main(["demo", *argv])
        _, err = capsys.readouterr()
        assert code == 2 and len(err.strip().splitlines()) == 1, err


def test_demo_never_imports_torch():
    code = ("import sys; from edgelora.cli import main; rc = main(['demo', '--no-plot', '--quiet', '--epochs', '3']);"
            " print(rc, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "0 False", out.stderr


def test_make_demo_rebuilds_the_shipped_bundle(tmp_path):
    """edgelora.cli.make_demo is deterministic: it rebuilds the shipped weights (to float rounding of the BLAS)."""
    rebuilt = make_demo.build(tmp_path / "b")
    shipped = load_manifest(BUNDLE)
    same = {"fingerprint": shipped.fingerprint, "producer": shipped.producer, "checksum": shipped.checksum}
    assert dataclasses.replace(rebuilt, **same) == shipped

    def weights(folder):
        return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(folder / "backbone.onnx")).graph.initializer}
    a, b = weights(tmp_path / "b"), weights(BUNDLE)
    assert a.keys() == b.keys() and all(np.allclose(a[k], b[k], atol=1e-4) for k in a)
