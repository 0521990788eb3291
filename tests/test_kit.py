"""The training kit (edgelora/graphs/kit.py, kit_graphs.py) and the Python engine over it (onnx_trainer.py)."""
import dataclasses
import json
import os
import re
import subprocess

import numpy as np
import onnx
import pytest

from edgelora import Backbone, Predictor, finetune, load_adapter
from edgelora.graphs.kit import KitRecipe, build_kit, load_kit
from edgelora.graphs.onnx_utils import OLDEST_ORT
from tests.helpers import explicit, mlp_bundle, onnx_finetune, random_mlp

OLD_PYTHON = os.environ.get("EDGELORA_OLD_ORT_PYTHON")


@pytest.fixture(scope="module")
def digits():
    from edgelora.cli.demo_data import splits
    from edgelora.cli.demo import BUNDLE
    s = splits(0)
    return Backbone(BUNDLE), s["finetune"], s["test"]


def test_graphs_pass_the_full_check_at_opset_17_ir_8(toy_bundle):
    for recipe in (KitRecipe(), KitRecipe(optimizer="sgd", clip_norm=1.0, bias=False), KitRecipe(optimizer="adam")):
        kit = build_kit(Backbone(toy_bundle).manifest, recipe)
        for blob in (kit.train_epoch, kit.evaluate):
            model = onnx.load_from_string(blob)
            onnx.checker.check_model(model, full_check=True)
            assert model.ir_version == 8 and [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    layout = kit.contract["layout"]
    assert layout["size"] == sum(int(np.prod(t["shape"])) for t in layout["tensors"])
    assert [t["name"] for t in layout["tensors"]] == ["A.fc0.input", "A.fc1.input", "A.fc2.input", "B", "bias"]


@pytest.mark.parametrize("extra", [{}, {"optimizer": "sgd", "lr": 0.01, "clip_norm": 0.5},
                                   {"optimizer": "adam", "class_weights": "balanced", "schedule": "cosine",
                                    "warmup_epochs": 1.0, "batch_size": 32},
                                   {"val_fraction": 0.2, "patience": 3}])
def test_onnx_engine_gives_the_numpy_trainers_adapter(digits, extra):
    backbone, train, test = digits
    cfg = explicit(**extra)
    a, ha = finetune(backbone, *train, cfg)
    b, hb = onnx_finetune(backbone, *train, cfg)
    assert np.abs(a.flat).max() > 0.05 and np.abs(a.flat - b.flat).max() <= 1e-4
    assert (ha.best_epoch, ha.stopped) == (hb.best_epoch, hb.stopped) and len(ha.epochs) == len(hb.epochs)
    acc = [Predictor(backbone, x).evaluate(*test)["accuracy"] for x in (a, b)]
    assert abs(acc[0] - acc[1]) <= 0.001 and acc[1] > 0.7
    assert b.config.training["engine"] == "onnx"


def test_regression_kit_matches_numpy(tmp_path):
    mlp_bundle(tmp_path / "b", random_mlp([6, 8, 2]), task="regression")
    backbone = Backbone(tmp_path / "b")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((90, 6)).astype(np.float32)
    y = np.stack([x[:, 0] * 2, x[:, 1] - x[:, 2]], 1).astype(np.float32)
    a, _ = finetune(backbone, x, y, explicit(epochs=8))
    b, _ = onnx_finetune(backbone, x, y, explicit(epochs=8))
    assert np.abs(a.flat - b.flat).max() <= 1e-4 and np.abs(a.flat).max() > 0.05


def test_kit_saves_loads_and_trains_the_same(toy_bundle, toy_data, tmp_path):
    backbone = Backbone(toy_bundle)
    kit = build_kit(backbone.manifest, KitRecipe(r=2))
    kit.save(tmp_path / "kit")
    again = load_kit(tmp_path / "kit", backbone.manifest)
    assert again.train_epoch == kit.train_epoch and again.contract == json.loads(json.dumps(kit.contract))
    a, _ = onnx_finetune(backbone, *toy_data, explicit(r=2), kit=again)
    b, _ = finetune(backbone, *toy_data, explicit(r=2))
    assert np.abs(a.flat - b.flat).max() <= 1e-4


def test_error_truncated_graph_and_other_backbone(toy_bundle, tmp_path):
    backbone = Backbone(toy_bundle)
    build_kit(backbone.manifest, KitRecipe()).save(tmp_path / "kit")
    blob = (tmp_path / "kit" / "train_epoch.onnx").read_bytes()
    (tmp_path / "kit" / "train_epoch.onnx").write_bytes(blob[:len(blob) // 2])
    with pytest.raises(ValueError, match="train_epoch.onnx is corrupt or truncated"):
        load_kit(tmp_path / "kit")
    (tmp_path / "kit" / "train_epoch.onnx").write_bytes(blob)
    contract = json.loads((tmp_path / "kit" / "kit.json").read_text())
    del contract["layout"], contract["checksum"]                      # as a kit without a checksum would be
    (tmp_path / "kit" / "kit.json").write_text(json.dumps(contract))
    with pytest.raises(ValueError, match=r"missing or malformed field 'layout'; the kit is incomplete"):
        load_kit(tmp_path / "kit")
    mlp_bundle(tmp_path / "other", random_mlp([10, 8, 8, 3], seed=1))
    kit = build_kit(Backbone(tmp_path / "other").manifest, KitRecipe())
    with pytest.raises(ValueError, match="built for another backbone: expected identity sha256:"):
        onnx_finetune(backbone, np.zeros((30, 10), np.float32), np.arange(30) % 3, explicit(), kit=kit)
    (tmp_path / "notakit").mkdir()
    (tmp_path / "notakit" / "mine.txt").write_text("keep")
    with pytest.raises(ValueError, match="not a training kit folder; refusing to replace it"):
        kit.save(tmp_path / "notakit")
    assert (tmp_path / "notakit" / "mine.txt").read_text() == "keep"


def test_cli_kit_writes_a_loadable_kit_and_refuses_foreign_outputs(toy_bundle, tmp_path, capsys):
    from edgelora.cli import main
    assert main(["kit", str(toy_bundle), "--out", str(tmp_path / "kit"), "--rank", "2", "--epochs", "7", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    kit = load_kit(tmp_path / "kit", Backbone(toy_bundle).manifest)
    assert r["recipe"]["r"] == 2 and kit.contract["defaults"]["epochs"] == 7 and kit.contract["layout"]["rank"] == 2
    assert main(["kit", str(toy_bundle), "--out", str(tmp_path / "kit"), "--quiet"]) == 0   # a kit is replaced
    for out, message in ((toy_bundle, "is the input bundle"), (tmp_path / "kit" / "kit.json", "")):
        assert main(["kit", str(toy_bundle), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert main(["kit", str(toy_bundle), "--out", str(tmp_path / "k2"), "--weight-decay", "auto"]) == 2
    assert "found 'auto'" in capsys.readouterr().err and not (tmp_path / "k2").exists()


def test_error_auto_settings_and_dropout(toy_bundle, toy_data):
    backbone = Backbone(toy_bundle)
    with pytest.raises(ValueError, match=r"engine='onnx' trains one recipe, chosen by cross-validation or given; found 'auto' for \['r'\]"):
        onnx_finetune(backbone, *toy_data, explicit(r="auto", val_fraction=0.2))
    with pytest.raises(ValueError, match="expected lora_dropout=0"):
        onnx_finetune(backbone, *toy_data, explicit(lora_dropout=0.1))
    with pytest.raises(ValueError, match="engine='onnx' trains skip adapters: expected form='skip', found 'last'"):
        onnx_finetune(backbone, *toy_data, explicit(form="last"))
    with pytest.raises(ValueError, match="engine should be 'numpy' or 'onnx', found 'torch'"):
        finetune(backbone, *toy_data, explicit(), engine="torch")
    with pytest.raises(ValueError, match="init, use_cache=False and checkpoint_dir need engine='numpy'"):
        finetune(backbone, *toy_data, explicit(), engine="onnx", use_cache=False)


def test_engine_onnx_trains_what_numpy_cross_validation_chose(toy_bundle, toy_data):
    """With selection on, numpy cross-validates the recipes a kit can train (skip adapters on raw taps: the
    rank, weight decay and epochs here) and the kit trains the chosen one: the numpy adapter within 1e-4."""
    chooses = explicit(r="auto", weight_decay="auto", cv_folds=5, form="auto", tap_scaling="auto", epochs=8)
    a, h = finetune(Backbone(toy_bundle), *toy_data, chooses, engine="onnx")
    narrowed = dataclasses.replace(chooses, form="skip", tap_scaling="none")
    b, hb = finetune(Backbone(toy_bundle), *toy_data, narrowed)
    assert h.selection["chosen"] == hb.selection["chosen"] and len(h.selection["candidates"]) == 3 * 4 * 3
    assert h.chosen["r"] == hb.chosen["r"] and h.chosen["epochs"] == hb.chosen["epochs"]
    assert a.config.training["engine"] == "onnx" and a.config.training["cross_validation"]["chosen"]["form"] == "skip"
    assert np.abs(a.flat - b.flat).max() <= 1e-4


def test_finetune_engine_onnx_dispatches_to_the_kit(toy_bundle, toy_data):
    a, h = finetune(Backbone(toy_bundle), *toy_data, explicit(), engine="onnx")
    b, _ = finetune(Backbone(toy_bundle), *toy_data, explicit())
    assert a.config.training["engine"] == "onnx" and np.abs(a.flat - b.flat).max() <= 1e-4
    assert h.stopped == "completed" and len(h.epochs) == 12


def test_cli_finetune_engine_onnx(toy_bundle, toy_data, tmp_path, capsys):
    from edgelora.cli import main
    np.savez(tmp_path / "d.npz", x=toy_data[0], y=toy_data[1])
    argv = ["finetune", str(toy_bundle), "--data", str(tmp_path / "d.npz"), "--out", str(tmp_path / "a"), "--engine", "onnx"]
    assert main(argv + ["--rank", "auto", "--val-fraction", "0.2"]) == 2
    assert "engine='onnx' trains one recipe, chosen by cross-validation or given" in capsys.readouterr().err
    assert main(argv + ["--form", "last"]) == 2 and "trains skip adapters" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    assert main(argv + ["--rank", "2", "--weight-decay", "0.1", "--tap-scaling", "none", "--form", "skip", "--epochs", "5",
                        "--quiet"]) == 0
    adapter = load_adapter(tmp_path / "a", Backbone(toy_bundle).manifest)
    assert adapter.config.training["engine"] == "onnx" and adapter.config.r == 2


def test_error_bad_data_is_refused_before_training(toy_bundle, toy_data):
    backbone, (x, y) = Backbone(toy_bundle), toy_data
    nan = x.copy()
    nan[5, 2] = np.nan
    cases = [((x[:, :9], y), re.escape("expected shape (N, 10) for input `x`, found (120, 9)")),
             ((nan, y), "contain NaN or Inf"), ((x, y[:7]), "expected 120 targets"),
             ((x, y + 0.5), "expected integer class indices")]
    for (xx, yy), message in cases:
        with pytest.raises((ValueError, TypeError), match=message):
            onnx_finetune(backbone, xx, yy, explicit())


def test_error_non_finite_keeps_the_last_good_epoch(toy_bundle, toy_data):
    x, y = toy_data
    _, h = onnx_finetune(Backbone(toy_bundle), x * 1e30, y, explicit(lr=1e30, optimizer="sgd"))
    assert h.stopped == "non_finite"


@pytest.mark.skipif(not OLD_PYTHON, reason="set EDGELORA_OLD_ORT_PYTHON to a Python with an older onnxruntime "
                                           f"(measured: {OLDEST_ORT} runs the kit)")
def test_an_older_onnxruntime_runs_an_epoch(toy_bundle, tmp_path):
    build_kit(Backbone(toy_bundle).manifest, KitRecipe(r=2)).save(tmp_path / "kit")
    code = (
        "import sys, json, numpy as np, onnxruntime as ort\n"
        "k = json.load(open(sys.argv[1] + '/kit.json')); P = k['layout']['size']\n"
        "s = ort.InferenceSession(sys.argv[1] + '/train_epoch.onnx', providers=['CPUExecutionProvider'])\n"
        "n, w = 45, k['layout']['row_width']\n"
        "p = np.random.default_rng(0).standard_normal(P).astype(np.float32) * 0.1\n"
        "out = s.run(None, {'rows': np.ones((n, w), np.float32), 'targets': np.arange(n) % 3,\n"
        "    'class_weights': np.ones(3, np.float32), 'perm': np.arange(n), 'lr': np.full(3, 1e-3),\n"
        "    'weight_decay': np.array(0.1), 'params': p, 'opt_m': 0 * p, 'opt_v': 0 * p, 'step': np.array(0)})\n"
        "assert out[3] == 3 and out[4] and np.abs(out[0] - p).max() > 0, out\n"
        "e = ort.InferenceSession(sys.argv[1] + '/evaluate.onnx', providers=['CPUExecutionProvider'])\n"
        "assert e.run(None, {'rows': np.ones((n, w), np.float32), 'targets': np.arange(n) % 3, 'params': p})[0].shape == (n, 3)\n"
        "print(ort.__version__)\n")
    out = subprocess.run([OLD_PYTHON, "-c", code, str(tmp_path / "kit")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    print("onnxruntime", out.stdout.strip(), "ran an epoch of the kit")


def test_error_every_flipped_bit_of_kit_json_is_refused_never_a_key_error(toy_bundle, tmp_path):
    """12,497 of 48,024 single-bit flips of kit.json were accepted and 188 raised KeyError; now the contract
    carries a checksum, and one without it (older kits) is checked field by field."""
    build_kit(Backbone(toy_bundle).manifest, KitRecipe(r=2)).save(tmp_path / "kit")
    path = tmp_path / "kit" / "kit.json"
    good = path.read_bytes()
    legacy = json.dumps({k: v for k, v in json.loads(good).items() if k != "checksum"}).encode()
    expected = load_kit(tmp_path / "kit").contract
    rng = np.random.default_rng(0)
    for blob, trials in ((good, 1500), (legacy, 300)):
        for i, bit in zip(rng.integers(0, len(blob), trials), rng.integers(0, 8, trials)):
            path.write_bytes(blob[:i] + bytes([blob[i] ^ (1 << bit)]) + blob[i + 1:])
            try:
                kit = load_kit(tmp_path / "kit")
            except (ValueError, FileNotFoundError) as e:  # the documented errors, naming the file
                assert "kit" in str(e)
                continue
            assert blob is legacy or {k: v for k, v in kit.contract.items()} == expected, (i, bit)
