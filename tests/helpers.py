"""Test helpers: tiny bundles built with onnx.helper from numpy weights (no torch needed; the demo backbone's
graph builder, cli/make_demo.py)."""
from __future__ import annotations

import numpy as np

from edgelora.cli import make_demo
from edgelora.files.bundle import BUNDLE_FORMAT_VERSION, InputSpec, Manifest, OutputSpec, Standardize, TapSpec, write_bundle


def mlp_onnx(layers: list[tuple[np.ndarray, np.ndarray]]) -> tuple[bytes, list[str]]:
    """ONNX bytes of an MLP x -> [Linear, ReLU]* -> Linear, with every Linear's input as an extra output (the demo
    backbone's graph), and those outputs' names."""
    layers = [(w.astype(np.float32), b.astype(np.float32)) for w, b in layers]   # w (d_in, d_out), b (d_out,)
    return make_demo.onnx_bytes(layers, "mlp", "tests/helpers.py"), [f"tap{i}" for i in range(len(layers))]


def mlp_bundle(folder, layers, classes=None, mean=None, std=None, task="classification") -> Manifest:
    """Write a bundle for an MLP given as [(W (d_in, d_out), b)]."""
    blob, taps = mlp_onnx(layers)
    c = layers[-1][0].shape[1]
    classes = tuple(classes or [f"c{i}" for i in range(c)]) if task == "classification" else ()
    pre = {} if mean is None else {"x": Standardize(np.asarray(mean).tolist(), np.asarray(std).tolist())}
    manifest = Manifest(
        format_version=BUNDLE_FORMAT_VERSION, fingerprint="sha256:" + "0" * 64,
        inputs=(InputSpec("x", ("N", layers[0][0].shape[0]), "float32"),), output=OutputSpec("logits", c),
        taps=tuple(TapSpec(f"fc{i}.input", t, layers[i][0].shape[0], "none", f"fc{i}") for i, t in enumerate(taps)),
        task=task, classes=classes, preprocess=pre, producer={"name": "tests.helpers"})
    return write_bundle(folder, blob, manifest)


def random_mlp(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((a, b)).astype(np.float32) / np.sqrt(a), rng.standard_normal(b).astype(np.float32) * 0.1)
            for a, b in zip(sizes[:-1], sizes[1:])]


def no_datasets(path) -> str:
    """Skip reason for a test on a real dataset that is absent, saying where the datasets come from."""
    return (f"{path} not present: the real datasets are not in the repository; they are read from "
            f"../shared/datasets beside the clone (the project's workspace and CI provide it; each folder's "
            f"README.txt names its public source) or from $EDGELORA_DATASETS")


def js_client() -> str:
    """The `node` executable, after `npm ci --ignore-scripts` in clients/js when its pinned packages are
    missing. Fails, never skips, without node or npm: CI must run the JavaScript client's tests."""
    import shutil
    import subprocess
    from pathlib import Path

    import pytest
    client = Path(__file__).resolve().parent.parent / "clients" / "js"
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: the JavaScript client's tests need Node.js >= 20 and npm")
    if not all((client / "node_modules" / p).is_dir() for p in ("onnxruntime-node", "onnxruntime-web", "puppeteer-core")):
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("npm is not installed: it installs the JavaScript client's pinned onnxruntime packages")
        done = subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=client,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"npm ci in {client} failed: {done.stderr[-2000:]}"
    return node


class BackboneCounter:
    """Counts the samples a Backbone sends through its onnxruntime session from now on (`.samples`),
    by wrapping the session's `run`: the Skip-Cache tests count backbone work from the test side."""

    def __init__(self, backbone):
        self.samples = 0
        run = backbone._session.run

        def counted(outputs, feed, *args, **kwargs):
            self.samples += len(next(iter(feed.values())))
            return run(outputs, feed, *args, **kwargs)
        backbone._session.run = counted


def onnx_finetune(*args, **kwargs):
    """finetune with the ONNX training kit (engine="onnx")."""
    from edgelora import finetune
    return finetune(*args, engine="onnx", **kwargs)


def explicit(**kw):
    """One explicit recipe, trained on every sample (no selection), whatever TrainConfig's defaults are."""
    import dataclasses
    from edgelora import TrainConfig
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    base = dict(r=4, weight_decay=0.1, val_fraction=0.0, cv_folds=0, tap_scaling="none", form="skip", epochs=12)
    return TrainConfig(**{k: v for k, v in {**base, **kw}.items() if k in fields})


def default_ctrl_c() -> None:
    """For subprocess's preexec_fn: SIGINT at its default in the child, as a terminal's foreground job has it (a
    test run in the background of a script inherits it ignored, and Python then leaves it ignored)."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Rows:
    """A cached feature source over fixed rows (what runtime/features.FeatureSource gives the loop)."""
    static = True

    def __init__(self, y0, t):
        self.y0, self.t = y0, t

    def __call__(self, idx):
        return self.y0[idx].copy(), self.t[idx]


def rows_data(n=37, c=3, widths=(6, 4), seed=0):
    """Random cached rows: y0 (n, c), taps (n, sum(widths)) and labels 0 .. c - 1."""
    rng = np.random.default_rng(seed)
    y0 = rng.standard_normal((n, c)).astype(np.float32)
    t = rng.standard_normal((n, sum(widths))).astype(np.float32)
    return y0, t, rng.integers(0, c, n)
