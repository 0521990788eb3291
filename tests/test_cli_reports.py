"""Every command's text report and its --json, for each engine and adapter form: no crash after the work is
done (the onnx engine's text report raised KeyError 'form' after saving), and strictly valid JSON."""
import json

import numpy as np
import pytest

from edgelora.files.adapter import CONFIG_FILE, WEIGHTS_FILE
from tests.test_cli import FAST, files, run  # noqa: F401 - fixture


def strict(text: str):
    """Parse as RFC 8259 JSON: NaN and Infinity are not JSON."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


def both(capsys, *argv) -> tuple[str, dict]:
    """The command's text report and its --json result, each from a run that exits 0."""
    code, text, err = run(capsys, *argv)
    assert code == 0 and text.strip() and "Traceback" not in err, err
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return text, strict(out)


FINETUNES = {"numpy-skip": ["--form", "skip"], "numpy-last": ["--form", "last"],
             "numpy-auto": ["--form", "auto", "--tap-scaling", "auto"],
             "numpy-holdout": ["--val-fraction", "0.2", "--rank", "auto"],
             "onnx": ["--engine", "onnx", "--rank", "8", "--weight-decay", "0.01", "--form", "skip",
                      "--tap-scaling", "none"]}


@pytest.mark.parametrize("name", FINETUNES)
def test_finetune_reports_for_each_engine_and_form(files, capsys, name):
    tmp, bundle = files
    text, r = both(capsys, "finetune", bundle, "--data", tmp / "train.npz", *FAST, "--out", tmp / name,
                   *FINETUNES[name])
    assert f"saved      {tmp / name}" in text and r["adapter"] == str(tmp / name)
    assert r["chosen"]["form"] in ("skip", "last")


def test_every_other_command_reports_in_text_and_json(files, capsys):
    tmp, bundle = files
    ad, store, cache = tmp / "ad", tmp / "store", tmp / "cache"
    assert run(capsys, "finetune", bundle, "--data", tmp / "train.npz", *FAST, "--out", ad, "--cache-dir", cache)[0] == 0
    commands = [["eval", bundle, "--data", tmp / "train.npz"], ["eval", bundle, "--data", tmp / "train.npz", "--adapter", ad],
                ["predict", bundle, "--data", tmp / "x.npy", "--adapter", ad, "--out", tmp / "p.npy"],
                ["merge", bundle, ad, "--out", tmp / "m.onnx"], ["merge", bundle, "--format", "lora_model", "--out", tmp / "l.onnx"],
                ["merge", bundle, ad, "--format", "onnx_adapter", "--out", tmp / "a.onnx_adapter"],
                ["kit", bundle, "--out", tmp / "kit"], ["cache", "info", bundle, "--cache-dir", cache],
                ["personalize", store, "u1", "--bundle", bundle, "--data", tmp / "train.npz", "--recipe", "fixed",
                 "--epochs", "3"],
                ["store", "list", store], ["store", "show", store, "u1"]]
    for argv in commands:
        text, r = both(capsys, *argv)
        assert isinstance(r, dict), argv


def test_json_is_strict_when_a_value_is_not_finite(files, capsys, monkeypatch):
    """`eval --json` printed "loss": NaN, which strict JSON parsers reject; a non-finite number is now null."""
    from edgelora.cli import evaluate
    tmp, bundle = files
    real = evaluate.run
    monkeypatch.setattr(evaluate, "run", lambda args: {**real(args), "loss": float("nan"),
                                                        "extra": [np.float32("inf"), np.float64(1.5)]})
    code, out, err = run(capsys, "eval", bundle, "--data", tmp / "train.npz", "--json")
    assert code == 0, err
    r = strict(out)
    assert r["loss"] is None and r["extra"] == [None, 1.5]


def test_error_finite_but_huge_adapter_values_are_refused_at_load(files, capsys):
    """3e38 weights or lora_alpha 1e308 were accepted, then `eval --json` printed NaN losses."""
    from safetensors.numpy import load_file, save_file
    tmp, bundle = files
    ad = tmp / "ad"
    assert run(capsys, "finetune", bundle, "--data", tmp / "train.npz", *FAST, "--out", ad)[0] == 0
    config = json.loads((ad / CONFIG_FILE).read_text())
    (ad / CONFIG_FILE).write_text(json.dumps({**config, "lora_alpha": 1e308, "weights_sha256": ""}))
    code, _, err = run(capsys, "eval", bundle, "--data", tmp / "train.npz", "--adapter", ad)
    assert code == 2 and "`lora_alpha` should be positive and at most" in err
    (ad / CONFIG_FILE).write_text(json.dumps({**config, "weights_sha256": ""}))
    tensors = load_file(ad / WEIGHTS_FILE)
    key = sorted(tensors)[0]
    tensors[key] = np.full_like(tensors[key], 3e38)
    save_file(tensors, ad / WEIGHTS_FILE)
    code, _, err = run(capsys, "eval", bundle, "--data", tmp / "train.npz", "--adapter", ad, "--json")
    assert code == 2 and f"tensor `{key}` holds 3e+38" in err


def test_error_a_backbone_computing_nan_is_refused_at_cache_fill_naming_the_samples(tmp_path, capsys):
    """A backbone that outputs NaN trained to the end, failed only at save and left NaN rows cached."""
    import onnx
    from onnx import helper
    from edgelora import Backbone, SkipCache
    from edgelora.files.bundle import load_manifest, write_bundle
    from tests.helpers import mlp_bundle, mlp_onnx, random_mlp
    layers = random_mlp([4, 2])
    template = mlp_bundle(tmp_path / "plain", layers)
    model = onnx.load_from_string(mlp_onnx(layers)[0])
    for node in model.graph.node:                      # sqrt(x) in front: NaN for a negative input
        node.input[:] = ["sx" if i == "x" else i for i in node.input]
    model.graph.node.insert(0, helper.make_node("Sqrt", ["x"], ["sx"]))
    write_bundle(tmp_path / "b", model.SerializeToString(), template)
    x = np.ones((30, 4), np.float32)
    x[3, 1], x[17, 2] = -1.0, -2.0
    y = np.arange(30) % 2
    np.savez(tmp_path / "d.npz", x=x, y=y)
    code, _, err = run(capsys, "finetune", tmp_path / "b", "--data", tmp_path / "d.npz", *FAST,
                       "--out", tmp_path / "ad", "--cache-dir", tmp_path / "cache")
    assert code == 2 and "NaN or Inf for 2 sample(s) (3, 17; counted from 0)" in err
    assert not (tmp_path / "ad").exists()
    cache = SkipCache(Backbone(tmp_path / "b"), tmp_path / "cache")
    assert cache.stats()["rows"] == 0


def test_cache_info_on_a_read_only_cache(files, capsys, monkeypatch):
    """`cache info` on a read-only cache exited 1: it created its lock file."""
    import errno
    from edgelora.files import fileio
    tmp, bundle = files
    cache = tmp / "cache"
    assert run(capsys, "finetune", bundle, "--data", tmp / "train.npz", *FAST, "--out", tmp / "ad",
               "--cache-dir", cache)[0] == 0
    real_open = open

    def read_only(path, mode="r", *a, **k):           # what a read-only mount answers to any write
        if any(c in mode for c in "wa+"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, mode, *a, **k)
    monkeypatch.setattr(fileio, "open", read_only, raising=False)
    text, r = both(capsys, "cache", "info", bundle, "--cache-dir", cache)
    assert r["caches"][0]["rows"] == 120 and "holds 120 rows" in text


@pytest.mark.parametrize("name, budget, said", [("train.csv", "0.05", "parsing it takes about 16 x its size")])
def test_error_data_larger_than_the_memory_budget_is_refused_before_it_is_read(files, capsys, name, budget, said):
    """A 1.0 MB .npz inflated to 2.34 GB and a 100 MB CSV to 1.5 GB whatever --memory-budget said."""
    tmp, bundle = files
    code, _, err = run(capsys, "finetune", bundle, "--data", tmp / name, *FAST, "--out", tmp / "ad",
                       "--memory-budget", budget)
    assert code == 2 and said in err and "more than the" in err and "--memory-budget" in err, err
    assert not (tmp / "ad").exists()


@pytest.mark.parametrize("name", ["train.npz", "x.npy"])
def test_stored_arrays_larger_than_the_memory_budget_are_memory_mapped(tmp_path, capsys, name):
    """An uncompressed .npz or a .npy above --memory-budget was refused: it is mapped, not read, and trains.
    (200 inputs a sample: 96 kB of data above a 20 kB budget that holds the samples' bookkeeping.)"""
    from tests.helpers import mlp_bundle, random_mlp
    mlp_bundle(tmp_path / "b", random_mlp([200, 3]))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "train.npz", x=rng.standard_normal((120, 200)).astype(np.float32), y=np.arange(120) % 3)
    np.save(tmp_path / "x.npy", np.load(tmp_path / "train.npz")["x"])
    args = ("--data", tmp_path / name) if name.endswith(".npz") else ("--data", tmp_path / "train.npz", "--x-key", "x")
    code, _, err = run(capsys, "finetune", tmp_path / "b", *args, *FAST, "--form", "skip", "--out", tmp_path / "ad",
                       "--memory-budget", "0.02")
    assert code == 0 and (tmp_path / "ad").is_dir(), err


def test_error_a_small_npz_that_inflates_past_the_budget_is_refused_unread(tmp_path, capsys):
    import zipfile
    from tests.helpers import mlp_bundle, random_mlp
    mlp_bundle(tmp_path / "b", random_mlp([10, 3]))
    x = np.zeros((400_000, 10), np.float32)           # 16 MB of zeros: a few kB compressed
    np.savez_compressed(tmp_path / "z.npz", x=x, y=np.zeros(400_000, np.int64))
    assert (tmp_path / "z.npz").stat().st_size < 100_000 and zipfile.is_zipfile(tmp_path / "z.npz")
    code, _, err = run(capsys, "finetune", tmp_path / "b", "--data", tmp_path / "z.npz", *FAST,
                       "--out", tmp_path / "ad", "--memory-budget", "8")
    assert code == 2 and "its arrays take 18.3 MB, more than the 8.0 MB" in err, err


def test_the_tier_line_says_when_the_deep_tier_stopped_early_and_what_it_could_still_reach():
    from edgelora.cli.finetune_report import _tier_lines
    d = {"considered": True, "won": False, "skip_fit": 1.0, "skip_score": 0.9, "skip_spread": 0.05,
         "deep_score": 0.5, "deep_spread": 0.1, "margin": -0.4, "needed": -0.02, "seconds": 1.5,
         "deep_folds": [2, 5], "deep_bound": 0.8}
    line, = _tier_lines(d, "classification")
    assert "tier       skip" in line and "stopped after 2 of 5 folds" in line and "at most 80.0 %" in line
    line, = _tier_lines({**d, "deep_folds": [5, 5], "won": True, "deep_score": 0.92, "margin": 0.02},
                        "classification")
    assert line.startswith("  tier       deep") and "margin +2.0 points, needed >= -2.0" in line
