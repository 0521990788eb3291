"""The `edgelora` command: finetune, eval, predict and cache, in-process via main(argv), plus real subprocesses."""
from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest

from edgelora import load_adapter
from edgelora.cli import COMMANDS, build_parser, main
from edgelora.cli.progress import Progress
from tests.helpers import mlp_bundle, random_mlp
from tests.test_train import count_checks_and_hashes


@pytest.fixture
def files(tmp_path, toy_bundle, toy_data):
    """The toy bundle (10 -> 3 classes) and its data as .npz, .npy and .csv (with a header)."""
    x, y = toy_data
    np.savez(tmp_path / "train.npz", x=x, y=y)
    np.savez(tmp_path / "keys.npz", feats=x, target=y)
    np.save(tmp_path / "x.npy", x)
    header = ",".join([f"f{i}" for i in range(10)] + ["label"])
    np.savetxt(tmp_path / "train.csv", np.c_[x, y], delimiter=",", header=header, comments="", fmt="%.6f")
    return tmp_path, str(toy_bundle)


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *argv) -> dict:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    assert len(out.strip().splitlines()) == 1, "--json prints exactly one line: one JSON object"
    return json.loads(out)


FAST = ("--epochs", "3", "--batch-size", "10")


def test_every_subcommand_has_help_with_an_example(capsys):
    names = [a.dest for a in build_parser()._subparsers._group_actions[0]._choices_actions]
    assert {"finetune", "eval", "predict", "cache", "demo", "export", "merge"} <= set(names)
    assert len(COMMANDS) == len(names)
    for name in names:
        code, out, _ = run(capsys, name, "--help")
        assert code == 0 and "example:" in out and f"edgelora {name}" in out, name


def test_no_command_is_a_usage_error(capsys):
    code, _, err = run(capsys)
    assert code == 2 and "COMMAND" in err


def test_finetune_then_eval_and_predict(files, capsys):
    d, bundle = files
    r = run_json(capsys, "finetune", bundle, "--data", d / "train.npz", "--out", d / "ad", *FAST)
    assert (d / "ad" / "adapter_config.json").is_file() and (d / "ad" / "adapter_model.safetensors").is_file()
    assert r["samples"] == {"train": 120, "val": 0} and r["cache"]["misses"] == 120 and r["cache"]["hits"] == 0
    assert set(r["seconds"]) == {"cache_fill", "train", "total"} and not r["val_before"] and not r["val_after"]
    cv = r["cross_validation"]                       # the default: cross-validation, then a refit on every sample
    assert cv["folds"] == 5 and {"score", "score_spread", "score_folds"} <= set(cv["chosen"])
    assert r["chosen"]["epochs"] in (1, 2, 3) and r["chosen"]["tap_scaling"] in ("none", "standard")
    base = run_json(capsys, "eval", bundle, "--data", d / "train.npz")
    tuned = run_json(capsys, "eval", bundle, "--adapter", d / "ad", "--data", d / "train.npz")
    for m in (base, tuned):
        assert {"accuracy", "macro_f1", "loss"} <= set(m) and m["samples"] == 120
    assert tuned["accuracy"] > base["accuracy"]

    p = run_json(capsys, "predict", bundle, "--adapter", d / "ad", "--data", d / "x.npy", "--out", d / "pred.npy")
    labels = np.load(d / "pred.npy")
    assert labels.shape == (120,) and labels.dtype == np.int64 and p["samples"] == 120
    assert np.mean(labels == np.load(d / "train.npz")["y"]) == pytest.approx(tuned["accuracy"])
    run_json(capsys, "predict", bundle, "--adapter", d / "ad", "--data", d / "train.npz", "--out", d / "p.npy",
             "--proba")
    proba = np.load(d / "p.npy")
    assert proba.shape == (120, 3) and np.allclose(proba.sum(axis=1), 1, atol=1e-5)
    assert not list(d.glob(".*tmp*")), "atomic writes leave no temporary files"


def test_text_reports_show_before_and_after(files, capsys):
    d, bundle = files
    code, out, err = run(capsys, "finetune", bundle, "--data", d / "train.npz", "--out", d / "ad", *FAST)
    assert code == 0 and err == ""  # stderr is not a terminal here: no progress bar
    assert "cross-validated accuracy" in out and "without fine-tuning" in out and "cache fill" in out
    assert str(d / "ad") in out
    code, out, err = run(capsys, "finetune", bundle, "--data", d / "train.npz", "--out", d / "ad2", *FAST,
                         "--val-fraction", "0.2")
    assert code == 0 and "before" in out and "after" in out and "best epoch" in out
    code, out, _ = run(capsys, "eval", bundle, "--adapter", d / "ad", "--data", d / "train.npz")
    assert code == 0 and "accuracy" in out and "macro-F1" in out
    code, out, err = run(capsys, "eval", bundle, "--data", d / "train.npz", "--quiet")
    assert (code, out, err) == (0, "", "")


def test_csv_and_custom_keys(files, capsys):
    d, bundle = files
    by_name = run_json(capsys, "eval", bundle, "--data", d / "train.csv", "--label-column", "label")
    by_index = run_json(capsys, "eval", bundle, "--data", d / "train.csv")
    keys = run_json(capsys, "eval", bundle, "--data", d / "keys.npz", "--x-key", "feats", "--y-key", "target")
    assert by_name["accuracy"] == by_index["accuracy"] == pytest.approx(keys["accuracy"])


def test_auto_rank_and_weight_decay(files, capsys):
    d, bundle = files
    r = run_json(capsys, "finetune", bundle, "--data", d / "train.npz", "--out", d / "ad", "--rank", "auto",
                 "--weight-decay", "auto", *FAST)
    cands = r["cross_validation"]["candidates"]      # (3 ranks + the last-layer form) x decays x tap scalings x
    assert len(cands) == (3 + 1) * 4 * 2 * 3          # epoch marks (1, 2, 3)
    recipe = lambda c: {k: c[k] for k in ("form", "r", "weight_decay", "tap_scaling", "epochs")}  # noqa: E731
    chosen = recipe(r["cross_validation"]["chosen"])
    assert recipe(r["chosen"]) == chosen and chosen in [recipe(c) for c in cands]   # trained what CV chose
    held = run_json(capsys, "finetune", bundle, "--data", d / "train.npz", "--out", d / "ad", "--rank", "auto",
                    "--weight-decay", "auto", "--tap-scaling", "none", "--form", "skip", "--val-fraction", "0.2",
                    "--overwrite", *FAST)
    assert len(held["candidates"]) == 12 and held["chosen"]["r"] in (2, 4, 8)


def test_require_gain_refuses_an_adapter_that_does_not_help(files, capsys):
    d, bundle = files
    from edgelora import Backbone, Predictor
    x = np.load(d / "train.npz")["x"]
    # labels the backbone already gets right: no adapter can beat it
    np.savez(d / "noise.npz", x=x, y=Predictor(Backbone(bundle)).predict(x))
    code, out, err = run(capsys, "finetune", bundle, "--data", d / "noise.npz", "--out", d / "noisy", *FAST,
                         "--require-gain")
    assert code == 1 and "--require-gain" in err and "does not help" in err and not (d / "noisy").exists()
    code, out, _ = run(capsys, "finetune", bundle, "--data", d / "noise.npz", "--out", d / "noisy", *FAST,
                       "--force-adapter")
    assert code == 0 and "fine-tuning does not help" in out and (d / "noisy").is_dir()


def test_an_adapter_estimated_worse_is_not_saved_unless_forced(files, capsys):
    """By default `finetune` saves nothing (exit 1, saying why) when cross-validation finds the backbone alone
    better than every adapter; --force-adapter saves the best adapter anyway, as before."""
    d, bundle = files
    from edgelora import Backbone, Predictor
    x = np.load(d / "train.npz")["x"]
    np.savez(d / "own.npz", x=x, y=Predictor(Backbone(bundle)).predict(x))
    wild = ("--lr", "50", "--optimizer", "sgd", "--weight-decay", "0")     # wrecks any adapter
    code, out, err = run(capsys, "finetune", bundle, "--data", d / "own.npz", "--out", d / "worse", *FAST, *wild)
    assert code == 1 and "no adapter written" in err and "--force-adapter" in err and not (d / "worse").exists()
    assert "without fine-tuning" in err and out == ""
    code, out, err = run(capsys, "finetune", bundle, "--data", d / "own.npz", "--out", d / "worse", *FAST, *wild,
                         "--force-adapter")
    assert code == 0 and "fine-tuning does not help" in out and (d / "worse").is_dir(), err


def test_persistent_cache_second_run_hits_and_cache_command(files, capsys):
    d, bundle = files
    args = ("finetune", bundle, "--data", d / "train.npz", "--out", d / "ad", "--cache-dir", d / "cache",
            "--cache-dtype", "float16", *FAST)
    first, second = run_json(capsys, *args), run_json(capsys, *args)
    assert (first["cache"]["misses"], first["cache"]["hits"]) == (120, 0)
    assert (second["cache"]["misses"], second["cache"]["hits"]) == (0, 120) and second["cache"]["on_disk"]
    info = run_json(capsys, "cache", "info", bundle, "--cache-dir", d / "cache")
    assert [(c["dtype"], c["rows"]) for c in info["caches"]] == [("float16", 120)]
    code, out, _ = run(capsys, "cache", "info", bundle, "--cache-dir", d / "cache")
    assert code == 0 and "120 rows" in out
    cleared = run_json(capsys, "cache", "clear", bundle, "--cache-dir", d / "cache")
    assert cleared["caches"][0]["cleared"] and cleared["caches"][0]["rows"] == 120
    assert run_json(capsys, "cache", "info", bundle, "--cache-dir", d / "cache")["caches"][0]["rows"] == 0


def test_memory_budget_spills_cache_to_disk(files, capsys):
    d, bundle = files
    r = run_json(capsys, "finetune", bundle, "--data", d / "train.npz", "--out", d / "ad", "--memory-budget",
                 "0.009", *FAST)     # the data (6 kB) and the bookkeeping (4.4 kB, x 2) fit, the cache (14 kB) does not
    assert r["cache"]["on_disk"]


@pytest.mark.parametrize("engine", [[], ["--engine", "onnx", "--form", "skip", "--tap-scaling", "none", "--cv-folds", "0"]])
def test_finetune_checks_the_samples_once_and_hashes_each_once(files, capsys, monkeypatch, engine):
    d, bundle = files
    counts = count_checks_and_hashes(monkeypatch)
    run_json(capsys, "finetune", bundle, "--data", d / "train.npz", "--out", d / "ad", *FAST, *engine)
    assert counts == {"as_inputs": 1, "as_targets": 1, "hashed": len(np.load(d / "train.npz")["y"])}


def test_resume_from_a_finished_checkpoint_gives_the_same_adapter(files, capsys):
    d, bundle = files
    common = ("finetune", bundle, "--data", d / "train.npz", "--checkpoint-dir", d / "ckpt", *FAST)
    run_json(capsys, *common, "--out", d / "a1")
    r = run_json(capsys, *common, "--out", d / "a2", "--resume")
    assert r["settings"]["resumed"]
    a1, a2 = load_adapter(d / "a1"), load_adapter(d / "a2")
    assert np.array_equal(a1.flat, a2.flat)


def test_resume_after_an_interrupt_gives_the_uninterrupted_adapter(files, capsys, monkeypatch):
    d, bundle = files
    common = ("finetune", bundle, "--data", d / "train.npz", "--checkpoint-dir", d / "ckpt", *FAST)
    run_json(capsys, "finetune", bundle, "--data", d / "train.npz", *FAST, "--out", d / "whole")
    update = Progress.update

    def interrupt(self, done, note=""):
        if self.label == "training" and done == 2:
            raise KeyboardInterrupt  # Ctrl-C during epoch 2: the checkpoint holds epoch 1
        update(self, done, note)
    with monkeypatch.context() as m:
        m.setattr(Progress, "update", interrupt)
        code, _, err = run(capsys, *common, "--out", d / "cut")
    assert code == 130 and "interrupted" in err and not (d / "cut").exists()
    run_json(capsys, *common, "--out", d / "resumed", "--resume")
    assert np.array_equal(load_adapter(d / "whole").flat, load_adapter(d / "resumed").flat)


def test_regression_bundle_reports_mse_and_mae(tmp_path, capsys, toy_data):
    x, _ = toy_data
    mlp_bundle(tmp_path / "reg", random_mlp([10, 8, 2]), task="regression")
    np.savez(tmp_path / "r.npz", x=x, y=np.c_[x[:, 0], x[:, 1]])
    r = run_json(capsys, "eval", tmp_path / "reg", "--data", tmp_path / "r.npz")
    assert {"mse", "mae", "loss"} <= set(r) and "accuracy" not in r
    run_json(capsys, "predict", tmp_path / "reg", "--data", tmp_path / "r.npz", "--out", tmp_path / "v.npy")
    assert np.load(tmp_path / "v.npy").shape == (120, 2)


BAD_INPUT = [  # (argv after BUNDLE is substituted, words the one-line message must contain)
    (["eval", "{b}", "--data", "{d}/missing.npz"], "missing.npz"),
    (["eval", "{b}", "--data", "{d}/keys.npz"], "--x-key"),                          # wrong keys
    (["eval", "{b}", "--data", "{d}/wide.npz"], "expected shape (N, 10)"),           # shape mismatch
    (["eval", "{b}", "--data", "{d}/labels.npz"], "class indices"),
    (["eval", "{b}", "--data", "{d}/nan.npz"], "NaN"),
    (["eval", "{d}/nobundle", "--data", "{d}/train.npz"], "bundle not found"),
    (["eval", "{b}", "--adapter", "{d}/noadapter", "--data", "{d}/train.npz"], "adapter not found"),
    (["eval", "{b}", "--data", "{d}/x.npy"], "no labels"),
    (["eval", "{b}", "--data", "{d}/data.txt"], "unsupported data format"),
    (["finetune", "{b}", "--data", "{d}/train.npz", "--out", "{d}/a", "--rank", "0"], "--rank"),
    (["finetune", "{b}", "--data", "{d}/train.npz", "--out", "{d}/a", "--lr", "-1"], "--lr"),
    (["finetune", "{b}", "--data", "{d}/train.npz", "--out", "{d}/a", "--lr", "nan"], "--lr"),
    (["finetune", "{b}", "--data", "{d}/train.npz", "--out", "{d}/a", "--epochs", "0"], "--epochs"),
    (["finetune", "{b}", "--data", "{d}/train.npz", "--out", "{d}/a", "--batch-size", "-5"], "--batch-size"),
    (["finetune", "{b}", "--data", "{d}/train.npz", "--out", "{d}/a", "--weight-decay", "-1"], "--weight-decay"),
    (["finetune", "{b}", "--data", "{d}/train.npz", "--out", "{d}/a", "--val-fraction", "1.5"], "--val-fraction"),
    (["finetune", "{b}", "--data", "{d}/train.npz", "--out", "{d}/a", "--memory-budget", "0"], "--memory-budget"),
    (["finetune", "{b}", "--data", "{d}/train.npz", "--out", "{d}/a", "--optimizer", "lbfgs"], "--optimizer"),
    (["finetune", "{b}", "--data", "{d}/train.npz", "--out", "{d}/a", "--threads", "0"], "--threads"),
    (["finetune", "{b}", "--data", "{d}/train.npz", "--out", "{d}/a", "--resume"], "--checkpoint-dir"),
    (["finetune", "{b}", "--data", "{d}/train.npz", "--out", "{d}/a", "--batch-size", "500"], "batch_size"),
    (["finetune", "{b}", "--data", "{d}/one_class.npz", "--out", "{d}/a"], "same class"),
    (["finetune", "{b}", "--data", "{d}/train.npz"], "--out"),
    (["predict", "{b}", "--data", "{d}/x.npy", "--out", "{d}/pred.txt"], ".npy"),
    (["predict", "{b}", "--data", "{d}/x.npy", "--out", "{d}/nodir/pred.npy"], "does not exist"),
    (["predict", "{b}", "--data", "{d}/wide.npz", "--out", "{d}/pred.npy"], "expected shape"),
    (["cache", "info", "{b}", "--cache-dir", "{d}/nocache"], "cache directory not found"),
    (["cache", "shrink", "{b}", "--cache-dir", "{d}"], "invalid choice"),
    (["merge", "{b}", "--out", "{d}/m.onnx"], "ADAPTER"),
    (["nosuchcommand"], "invalid choice"),
]


@pytest.mark.parametrize("argv,words", BAD_INPUT, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD_INPUT])
def test_error_bad_input_exits_2_with_one_line(files, capsys, argv, words):
    d, bundle = files
    x, y = np.load(d / "train.npz")["x"], np.load(d / "train.npz")["y"]
    np.savez(d / "wide.npz", x=np.zeros((4, 12), np.float32), y=np.zeros(4, int))
    np.savez(d / "labels.npz", x=x, y=y + 5)
    np.savez(d / "nan.npz", x=np.where(np.arange(120)[:, None] == 7, np.nan, x), y=y)
    np.savez(d / "one_class.npz", x=x, y=np.zeros_like(y))
    (d / "data.txt").write_text("1,2,3\n")
    code, out, err = run(capsys, *[a.format(b=bundle, d=d) for a in argv])
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert words in err and "Traceback" not in err and out == ""


def test_error_unexpected_failure_exits_1_with_one_line(files, capsys, monkeypatch):
    d, bundle = files
    import edgelora.cli.evaluate as ev

    def boom(*a, **k):
        raise RuntimeError("disk on fire")
    monkeypatch.setattr(ev.Predictor, "evaluate", boom)
    code, _, err = run(capsys, "eval", bundle, "--data", d / "train.npz")
    assert code == 1 and err.strip() == "edgelora eval: error: RuntimeError: disk on fire"
    code, _, err = run(capsys, "eval", bundle, "--data", d / "train.npz", "--verbose")
    assert code == 1 and "Traceback" in err  # --verbose adds the traceback


@pytest.mark.parametrize("flags", [("--epochs", "8"), ("--epochs", "3", "--val-fraction", "0.2")])
def test_progress_bar_is_sized_by_the_plan(files, capsys, monkeypatch, flags):
    """The bar was sized from the flags (8 epochs where cross-validation chose 4; 8 where a holdout trained 32);
    it is sized by the plan, which the report shows."""
    d, bundle = files
    seen = []
    update = Progress.update
    monkeypatch.setattr(Progress, "update", lambda self, done, note="": seen.append((self.label, done, self.total))
                        or update(self, done, note))
    r = run_json(capsys, "finetune", bundle, "--data", d / "train.npz", "--out", d / "ad", "--batch-size", "10",
                 "--time-budget", "1000", *flags)
    training = [(done, total) for label, done, total in seen if label == "training"]
    epochs = r["plan"]["epochs"]                     # one update per epoch callback, the last one fills the bar
    assert len(training) == epochs and training[-1] == (epochs, epochs)
    assert r["plan"]["rows"] == r["samples"] and len(r["plan"]["runs"]) == max(1, len(r["candidates"]))


def test_progress_bar_draws_only_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True
    quiet, tty = io.StringIO(), Tty()
    for stream in (quiet, tty):
        bar = Progress(10, "training", stream=stream)
        for i in range(1, 11):
            bar.update(i, "note")
        bar.close()
    assert quiet.getvalue() == ""
    assert "10/10" in tty.getvalue() and "[" + "#" * 28 + "]" in tty.getvalue()


def _cli(*argv):
    return subprocess.run([sys.executable, "-m", "edgelora.cli", *map(str, argv)], capture_output=True, text=True,
                          timeout=120)


def test_subprocess_runs_json_and_bad_input(files):
    d, bundle = files
    ok = _cli("finetune", bundle, "--data", d / "train.npz", "--out", d / "ad", *FAST, "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["adapter"] == str(d / "ad") and ok.stderr == ""
    bad = _cli("eval", bundle, "--data", d / "x.npy", "--adapter", d / "ad")
    assert bad.returncode == 2 and bad.stdout == "" and len(bad.stderr.strip().splitlines()) == 1
    assert "no labels" in bad.stderr


def test_cli_does_not_import_torch():
    code = "import sys, edgelora.cli; edgelora.cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
