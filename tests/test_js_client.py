"""The reference JavaScript client (clients/js) on onnxruntime-node and onnxruntime-web (wasm).

Needs node and npm (Node 20 is on the machine image and in CI): without them these tests FAIL, not skip.
`npm ci --ignore-scripts` installs the pinned packages when clients/js/node_modules is missing.
"""
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgelora import Backbone, Predictor, finetune, load_adapter
from edgelora.cli import main
from edgelora.graphs.kit import KitRecipe, build_kit
from tests.helpers import explicit, js_client, mlp_bundle, no_datasets, onnx_finetune, random_mlp

CLIENT = Path(__file__).resolve().parent.parent / "clients" / "js"


@pytest.fixture(scope="module")
def node():
    return js_client()


def js(node, *args, check=True, cwd=None):
    out = subprocess.run([node, str(CLIENT / "src" / "cli.js"), "train", *map(str, args)], capture_output=True,
                         text=True, timeout=300, cwd=cwd)
    if check:
        assert out.returncode == 0, out.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from edgelora.cli.demo import BUNDLE
    from edgelora.cli.demo_data import splits
    folder = tmp_path_factory.mktemp("js")
    s = splits(0)
    np.save(folder / "x.npy", s["finetune"][0])
    np.save(folder / "y.npy", s["finetune"][1])
    backbone = Backbone(BUNDLE)
    build_kit(backbone.manifest, KitRecipe(), {"epochs": 12, "lr": 3e-3, "weight_decay": 0.1, "seed": 0}).save(folder / "kit")
    return backbone, BUNDLE, folder, s


def compare(node, backbone, bundle, folder, train, test, cfg, extra=()):
    """Adapters of the JS client on both backends against engine='onnx' and the numpy trainer."""
    want, _ = onnx_finetune(backbone, *train, cfg)
    numpy_adapter, _ = finetune(backbone, *train, cfg)
    acc = Predictor(backbone, want).evaluate(*test)["accuracy"]
    for backend in ("node", "wasm"):
        out = folder / f"adapter_{backend}"
        r = json.loads(js(node, "--bundle", bundle, "--kit", folder / "kit", "--x", folder / "x.npy", "--y",
                          folder / "y.npy", "--out", out, "--backend", backend, "--json", *extra).stdout)
        got = load_adapter(out, backbone.manifest)  # checksums, shapes, backbone identity
        assert np.abs(got.flat - want.flat).max() <= 1e-5, backend
        assert np.abs(got.flat - numpy_adapter.flat).max() <= 1e-4, backend
        assert abs(Predictor(backbone, got).evaluate(*test)["accuracy"] - acc) <= 0.001, backend
        assert got.config.training["engine"] == f"js-{backend}" and r["epochs"] == cfg.epochs
    return acc


def test_js_prng_follows_the_specification(node):
    from edgelora.core.shuffle import SplitMix64, init_values
    code = ("const { SplitMix64, initValues } = await import(process.argv[1]);"
            "const r = new SplitMix64(0, 0);"
            "console.log(JSON.stringify({ first: [r.next(), r.next()].map(String),"
            " perm: Array.from(new SplitMix64(-3).permutation(1000), Number),"
            " init: Array.from(initValues([5, 3], 2, 11)) }));")
    out = subprocess.run([node, "--input-type=module", "-e", code, str(CLIENT / "src" / "prng.js")], capture_output=True, text=True, timeout=60)
    got = json.loads(out.stdout)
    assert [int(v) for v in got["first"]] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4]
    assert got["perm"] == SplitMix64(-3).permutation(1000).tolist()
    want = np.concatenate([a.ravel() for a in init_values((5, 3), 2, 11)])
    assert np.array_equal(np.asarray(got["init"], np.float32), want)


def test_js_inputs_of_any_dtype_are_cast_to_float32_like_numpy(node):
    code = ("const { prepareInputs } = await import(process.argv[1]); const b = { inputs: [{ name: 'x', dtype: 'float32',"
            " shape: ['n', 2] }] }; const arrays = [Float64Array.of(1.1, -2, 1e40, 3), BigInt64Array.of(-5n, 2n ** 40n, 0n, 7n),"
            " Uint8Array.of(0, 255, 3, 4), Int16Array.of(-300, 2, 3, 4)];"
            " console.log(JSON.stringify(arrays.map((d) => Array.from(prepareInputs({ shape: [2, 2], data: d }, 'x', b).data))));")
    out = subprocess.run([node, "--input-type=module", "-e", code, str(CLIENT / "src" / "data.js")], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1 and "x: sample 1 contains NaN or Inf" in out.stderr  # 1e40 overflows float32
    code = code.replace("1e40", "1e30")
    out = subprocess.run([node, "--input-type=module", "-e", code, str(CLIENT / "src" / "data.js")], capture_output=True,
                         text=True, timeout=60)
    want = [np.array(v).astype(np.float32) for v in ([1.1, -2, 1e30, 3], [-5, 2**40, 0, 7], [0, 255, 3, 4], [-300, 2, 3, 4])]
    assert [np.asarray(g, np.float32).tolist() for g in json.loads(out.stdout)] == [w.tolist() for w in want]


def test_js_warm_up_stops_when_asked_settles_or_runs_its_budget(node, demo):
    """src/warm.js on onnxruntime-node: one pass when stop() is true at once; the whole budget with settle false;
    settled (well before a long budget) otherwise."""
    _, bundle, folder, _ = demo
    code = ("const [, bundle, kit] = process.argv; const ort = (await import('onnxruntime-node')).default;"
            " const { openKit } = await import(new URL('src/finetune.js', 'file://' + process.env.CLIENT + '/').href);"
            " const { warmUp } = await import(new URL('src/warm.js', 'file://' + process.env.CLIENT + '/').href);"
            " const { folderSource } = await import(new URL('src/node_io.js', 'file://' + process.env.CLIENT + '/').href);"
            " const ctx = await openKit({ ort, backend: 'node', bundle: folderSource(bundle), kit: folderSource(kit) });"
            " const stopped = await warmUp(ctx, { stop: () => true });"
            " const budget = await warmUp(ctx, { budget: 0.3, settle: false });"
            " const settled = await warmUp(ctx, { budget: 60, quiet: 0.2 });"
            " console.log(JSON.stringify({ stopped, budget, settled }));")
    out = subprocess.run([node, "--input-type=module", "-e", code, str(bundle), str(folder / "kit")],
                         capture_output=True, text=True, timeout=120, cwd=CLIENT, env={"CLIENT": str(CLIENT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout)
    assert r["stopped"]["passes"] == 1
    assert r["budget"]["seconds"] >= 0.3 and r["budget"]["passes"] > 1
    assert 10 <= r["settled"]["passes"] and 0.2 <= r["settled"]["seconds"] < 30


def test_js_adapters_equal_the_python_ones_on_the_demo(node, demo, capsys):
    backbone, bundle, folder, s = demo
    acc = compare(node, backbone, bundle, folder, s["finetune"], s["test"], explicit())
    assert acc > 0.75
    # `edgelora eval` loads what the JS client wrote
    np.savez(folder / "test.npz", x=s["test"][0], y=s["test"][1])
    capsys.readouterr()
    assert main(["eval", str(bundle), "--adapter", str(folder / "adapter_node"), "--data", str(folder / "test.npz"),
                 "--json"]) == 0
    assert abs(json.loads(capsys.readouterr().out)["accuracy"] - acc) <= 0.001


def test_js_reads_npz_like_npy(node, demo, tmp_path):
    backbone, bundle, folder, s = demo
    np.savez_compressed(tmp_path / "d.npz", images=s["finetune"][0], labels=s["finetune"][1])
    base = ["--bundle", bundle, "--kit", folder / "kit", "--epochs", 2]
    js(node, *base, "--x", folder / "x.npy", "--y", folder / "y.npy", "--out", tmp_path / "a")
    js(node, *base, "--data", tmp_path / "d.npz", "--x-key", "images", "--y-key", "labels", "--out", tmp_path / "b")
    a, b = (load_adapter(tmp_path / n, backbone.manifest) for n in "ab")
    assert np.array_equal(a.flat, b.flat)
    r = js(node, *base, "--data", tmp_path / "d.npz", "--out", tmp_path / "c", check=False)
    assert r.returncode == 2 and """expected arrays ["x","y"], found ["images","labels"]""" in r.stderr


def test_js_regression_matches(node, tmp_path):
    mlp_bundle(tmp_path / "b", random_mlp([6, 8, 2]), task="regression", mean=np.full(6, 0.5), std=np.full(6, 2.0))
    backbone = Backbone(tmp_path / "b")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((90, 6)).astype(np.float32)
    y = np.stack([x[:, 0] * 2, x[:, 1] - x[:, 2]], 1).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    build_kit(backbone.manifest, KitRecipe(batch_size=16), {"epochs": 8, "lr": 3e-3, "weight_decay": 0.1, "seed": 2}).save(tmp_path / "kit")
    want, _ = onnx_finetune(backbone, x, y, explicit(epochs=8, batch_size=16, seed=2))
    for backend in ("node", "wasm"):
        js(node, "--bundle", tmp_path / "b", "--kit", tmp_path / "kit", "--data", tmp_path / "d.npz",
           "--out", tmp_path / backend, "--backend", backend)
        got = load_adapter(tmp_path / backend, backbone.manifest)
        assert got.config.task == "regression" and np.abs(got.flat - want.flat).max() <= 1e-5, backend
    assert np.abs(want.flat).max() > 0.05


def test_js_holdout_and_early_stopping_match(node, demo):
    backbone, bundle, folder, s = demo
    cfg = explicit(val_fraction=0.2, patience=3, epochs=20, seed=3, class_weights="balanced")
    compare(node, backbone, bundle, folder, s["finetune"], s["test"], cfg,
            ("--val-fraction", 0.2, "--patience", 3, "--epochs", 20, "--seed", 3, "--class-weights", "balanced"))


def test_js_errors_are_clear_and_never_touch_an_existing_adapter(node, demo, tmp_path):
    backbone, bundle, folder, s = demo
    out = tmp_path / "adapter"
    js(node, "--bundle", bundle, "--kit", folder / "kit", "--x", folder / "x.npy", "--y", folder / "y.npy",
       "--out", out, "--epochs", 1)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    mlp_bundle(tmp_path / "other", random_mlp([64, 8, 10], seed=1))
    build_kit(Backbone(tmp_path / "other").manifest, KitRecipe()).save(tmp_path / "other_kit")
    x = s["finetune"][0]
    np.save(tmp_path / "bool.npy", x > 8)
    np.save(tmp_path / "wide.npy", np.zeros((400, 65), np.float32))
    nan = x.copy()
    nan[7, 3] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "short_y.npy", s["finetune"][1][:10])
    shutil.copytree(folder / "kit", tmp_path / "cut_kit")
    graph = tmp_path / "cut_kit" / "train_epoch.onnx"
    graph.write_bytes(graph.read_bytes()[:1000])
    (tmp_path / "cut.npy").write_bytes((folder / "x.npy").read_bytes()[:5000])
    cases = [
        (("--kit", tmp_path / "other_kit"), "was built for another backbone: expected fingerprint"),
        (("--x", tmp_path / "bool.npy"), "dtype |b1 is not supported; expected one of <f4, <f8"),
        (("--x", tmp_path / "wide.npy"), "expected shape (N, 64) for input `x`, found (400, 65)"),
        (("--x", tmp_path / "nan.npy"), "sample 7 contains NaN or Inf"),
        (("--y", tmp_path / "short_y.npy"), "expected 400 targets (one per sample), found 10"),
        (("--kit", tmp_path / "cut_kit"), "train_epoch.onnx is corrupt or truncated"),
        (("--x", tmp_path / "cut.npy"), "needs 102400 data bytes, found"),
        (("--backend", "gpu"), "--backend: expected node or wasm"),
    ]
    base = {"--bundle": bundle, "--kit": folder / "kit", "--x": folder / "x.npy", "--y": folder / "y.npy", "--out": out}
    for change, message in cases:
        argv = {**base, **dict(zip(change[::2], change[1::2]))}
        r = js(node, *[v for kv in argv.items() for v in kv], check=False)
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, (change, r.stderr)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before, change
    # outputs it did not write are never replaced (edgelora.files.outputs' rule), checked before any work
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    (tmp_path / "work").mkdir()
    for target, message in ((tmp_path / "mine", "not an adapter folder; refusing to replace it"),
                            (folder / "kit", "is or holds the kit"), (tmp_path, "the current folder or one above it"),
                            (folder / "x.npy", "is or holds the data file")):
        argv = {**base, "--out": target}
        r = js(node, *[v for kv in argv.items() for v in kv], check=False, cwd=tmp_path / "work")
        assert r.returncode == 2 and message in r.stderr, (target, r.stderr)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep" and (folder / "kit" / "kit.json").is_file()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.torch
def test_js_adapters_equal_the_python_ones_on_fan(node, tmp_path):
    from device_bench.protocols import DATASETS
    if not (DATASETS / "cooling_fan").is_dir():
        pytest.skip(no_datasets(DATASETS / "cooling_fan"))
    from device_bench.protocols import fan as load
    from tests.reference import write_pretrained_bundle
    data = load()
    write_pretrained_bundle(tmp_path / "bundle", data)
    backbone = Backbone(tmp_path / "bundle")
    np.save(tmp_path / "x.npy", data["finetune"][0])
    np.save(tmp_path / "y.npy", data["finetune"][1])
    build_kit(backbone.manifest, KitRecipe(), {"epochs": 30, "lr": 3e-3, "weight_decay": 0.1, "seed": 0}).save(tmp_path / "kit")
    acc = compare(node, backbone, tmp_path / "bundle", tmp_path, data["finetune"], data["test"], explicit(epochs=30))
    print(f"fan: JS node and wasm adapters reach {acc:.3f} on the target test set, as engine='onnx' and numpy")
    assert acc > 0.6
