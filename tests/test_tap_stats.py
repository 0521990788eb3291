"""files/tap_stats + runtime/tap_choice: a bundle's tap statistics (channel std, a small map whole) exported
as outputs of their own, chosen by cross-validation, recorded by the adapter and used by prediction, serving
and merged models; bundles without them load and behave as before; malformed statistics are refused."""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from edgelora import Backbone, Predictor, TrainConfig, finetune  # noqa: E402
from edgelora.files.adapter import load_adapter  # noqa: E402
from edgelora.files.bundle import MANIFEST_FILE, load_manifest  # noqa: E402
from edgelora.files.fileio import dumps_json  # noqa: E402
from edgelora.files.formats import digest  # noqa: E402
from edgelora.files.schema import to_dict  # noqa: E402
from edgelora.files.tap_stats import columns, offered, view  # noqa: E402
from edgelora.graphs.kit_recipe import kit_recipe_of  # noqa: E402
from edgelora.graphs.merge import export_ort_adapter, merge  # noqa: E402
from edgelora.ops.serve import AdapterServer, ServeConfig  # noqa: E402
from edgelora.ops.store import AdapterStore  # noqa: E402
from edgelora_export import export_model  # noqa: E402

CLIENT = Path(__file__).resolve().parent.parent / "clients" / "js"


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(3, 8, 5), nn.ReLU(), nn.Conv1d(8, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool1d(1),
                         nn.Flatten(), nn.Linear(8, 3)).eval()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """(bundle with statistics, the same model's bundle without, torch model, samples x, labels y): the classes
    differ in their channels' spread only, which channel means cannot see."""
    root = tmp_path_factory.mktemp("taps")
    net = _net()
    export_model(net, torch.randn(4, 3, 40), root / "new", statistics=("std", "map"), map_max=150)  # tap 0's map (120) whole, tap 1's not
    export_model(net, torch.randn(4, 3, 40), root / "old", statistics=())
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    x = (rng.normal(size=(60, 3, 40)) * (1.0 + y)[:, None, None]).astype(np.float32)
    return root / "new", root / "old", net, x, y


def test_export_offers_statistics_equal_to_torch(lab):
    new, _, net, x, _ = lab
    m = load_manifest(new)
    assert [(s.tap, s.statistic, s.width) for s in m.tap_statistics] == \
        [("0.input", "std", 3), ("0.input", "map", 120), ("2.input", "std", 8)]
    assert offered(m) == ("std", "map") and m.tap_names == ("0.input", "2.input", "6.input")
    bb = Backbone(new)     # every statistic, each just before its tap
    assert bb.manifest.tap_names == ("0.input:std", "0.input:map", "0.input", "2.input:std", "2.input", "6.input")
    _, taps = bb.run(x)
    h = net[1](net[0](torch.from_numpy(x))).detach()
    np.testing.assert_allclose(taps[0], x.std(axis=2), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(taps[1], x.reshape(60, -1), rtol=1e-6)
    np.testing.assert_allclose(taps[3], h.numpy().std(axis=2), rtol=1e-4, atol=1e-6)
    full, part = bb.manifest, view(m, ("std",))
    assert len({full.identity, part.identity, view(m, ()).identity}) == 3 and view(m, ()).identity == m.identity
    rows = bb.rows(x[:5])
    np.testing.assert_array_equal(rows[:, columns(full, part)], Backbone(new, statistics=("std",)).rows(x[:5]))


def test_old_bundle_loads_and_behaves_as_before(lab, tmp_path):
    _, old, _, x, y = lab
    m = load_manifest(old)
    assert "tap_statistics" not in json.loads((old / MANIFEST_FILE).read_text()) and m.tap_statistics == ()
    keys = ("fingerprint", "inputs", "output", "taps", "preprocess", "task")   # the identity's fields before
    assert m.identity == digest(dumps_json({k: to_dict(m)[k] for k in keys}), tagged=True)
    bb = Backbone(old)
    assert bb.manifest == m and view(m, None) is m and bb.identity == m.identity
    adapter, history = finetune(bb, x, y, TrainConfig(epochs=4))
    assert adapter.config.tap_statistics == () and "tap_statistics" not in history.selection
    adapter.save(tmp_path / "a")
    assert "tap_statistics" not in json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert load_adapter(tmp_path / "a", m).config.target_taps == m.tap_names


def test_cross_validation_chooses_and_the_adapter_carries_the_choice(lab, tmp_path):
    new, _, _, x, y = lab
    bb = Backbone(new)
    adapter, history = finetune(bb, x, y, TrainConfig(epochs=6))
    stats = history.selection["tap_statistics"]
    assert set(stats["scores"]) == {"none", "std", "map"}
    key = {k: (stats["scores"][k], -stats["losses"][k]) for k in stats["scores"]}
    assert stats["chosen"] == [k for k in key if key[k] == max(key.values())][0]      # then the simpler
    assert adapter.config.tap_statistics == (() if stats["chosen"] == "none" else (stats["chosen"],))
    forced, _ = finetune(bb, x, y, TrainConfig(epochs=6, tap_statistics="std"))
    assert forced.config.tap_statistics == ("std",)
    assert forced.config.target_taps == ("0.input:std", "0.input", "2.input:std", "2.input", "6.input")
    forced.save(tmp_path / "a")
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["tap_statistics"] == ["std"]
    loaded = load_adapter(tmp_path / "a", load_manifest(new))
    want = Predictor(bb, loaded).outputs(x)
    assert np.abs(want - Predictor(Backbone(new, statistics=("std",)), loaded).outputs(x)).max() == 0
    merge(new, tmp_path / "a", tmp_path / "m.onnx")
    got = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert np.abs(got - want).max() <= 1e-5
    store = AdapterStore(tmp_path / "store")
    store.set_current("dev", store.add_version("dev", loaded, parent=None, samples=len(x)).version)
    served = AdapterServer(bb, store, ServeConfig(poll_seconds=0, batch_size=7)).outputs(x, ["dev", None] * 30)
    np.testing.assert_allclose(served[::2], want[::2], atol=1e-6)
    np.testing.assert_allclose(served[1::2], bb.run(x[1::2])[0], atol=1e-6)
    with pytest.raises(ValueError, match="reads the tap statistics \\['std'\\].*merge"):
        export_ort_adapter(new, tmp_path / "a", tmp_path / "a.onnx_adapter")


def test_training_kit_reproduces_an_explicit_choice_and_narrows_auto(lab):
    new, _, _, x, y = lab
    bb = Backbone(new)
    config = TrainConfig(r=2, epochs=3, weight_decay=0.0, cv_folds=0, form="skip", tap_scaling="none",
                         tap_statistics="std")
    kit, _ = finetune(bb, x, y, config, engine="onnx")
    ref, _ = finetune(bb, x, y, config)
    assert kit.config.tap_statistics == ref.config.tap_statistics == ("std",)
    assert np.abs(kit.flat - ref.flat).max() <= 1e-4
    plain, _ = finetune(bb, x, y, dataclasses.replace(config, tap_statistics="auto"), engine="onnx")
    assert plain.config.tap_statistics == ()


@pytest.fixture(scope="module")
def stats_kit(lab, tmp_path_factory):
    """A folder as the browser page reads it (bundle/, kit/, finetune.npz, test.npz) with the adapter numpy trained
    reading both statistics (numpy/) and, as kit/, `edgelora kit --recipe-of` that adapter."""
    from edgelora.cli import main
    new, _, _, x, y = lab
    folder = tmp_path_factory.mktemp("stats_kit")
    shutil.copytree(new, folder / "bundle")
    ref, _ = finetune(Backbone(new), x, y, TrainConfig(r=2, epochs=8, lr=1e-2, cv_folds=0, form="skip",
                                                       tap_scaling="none", tap_statistics="all"))
    ref.save(folder / "numpy")
    assert kit_recipe_of(ref.config)[1]["epochs"] == 8
    assert main(["kit", str(new), "--out", str(folder / "kit"), "--recipe-of", str(folder / "numpy")]) == 0
    np.savez(folder / "finetune.npz", x=x, y=y)
    np.savez(folder / "test.npz", x=x, y=y)
    return folder, ref


def _same_as_numpy(adapter_dir, new, ref):
    got = load_adapter(adapter_dir, load_manifest(new))    # bound to the view: checksums, identity, taps
    assert got.config.tap_statistics == ref.config.tap_statistics == ("std", "map")
    assert got.config.target_taps == ref.config.target_taps and np.abs(got.flat - ref.flat).max() <= 1e-4
    assert np.abs(ref.flat).max() > 0.05  # it learnt something


def test_kit_of_a_recipe_reading_statistics_trains_it_in_the_js_client(lab, stats_kit, tmp_path):
    """`edgelora kit --recipe-of` an adapter reading tap statistics: a kit over its view, whose Node adapter equals
    numpy's within 1e-4 and records the same statistics; the client refuses that kit on a bundle without them."""
    from tests.helpers import js_client
    new, old, _, _, _ = lab
    folder, ref = stats_kit
    client = str(CLIENT / "src" / "cli.js")
    run = lambda bundle, out: subprocess.run([js_client(), client, "train", "--bundle", str(bundle), "--kit",  # noqa: E731
                                              str(folder / "kit"), "--data", str(folder / "finetune.npz"), "--out",
                                              str(tmp_path / out)], capture_output=True, text=True, timeout=300)
    done = run(new, "js")
    assert done.returncode == 0, done.stderr[-2000:]
    _same_as_numpy(tmp_path / "js", new, ref)
    done = run(old, "js_old")
    assert done.returncode != 0 and "reads tap statistic(s) [\"std\",\"map\"], which the bundle does not offer" in done.stderr
    assert not (tmp_path / "js_old").exists()


def test_the_browser_page_trains_a_kit_reading_statistics_like_numpy(lab, stats_kit, tmp_path):
    """The page (`?assets=` the folder above) in headless Chromium: its downloaded adapter equals numpy's."""
    from device_bench.page_server import drive_page, serve_page
    from tests.helpers import js_client
    folder, ref = stats_kit
    server, url = serve_page(tmp_path / "site", folder)
    try:
        r = drive_page(js_client(), "chromium", url + "&chart=0", tmp_path / "adapter")
    finally:
        server.shutdown()
    assert r["errors"] == [] and r["n"] == 60
    _same_as_numpy(tmp_path / "adapter", lab[0], ref)


def _edited(src, dst, edit):
    shutil.copytree(src, dst)
    data = json.loads((dst / MANIFEST_FILE).read_text())
    del data["checksum"]
    edit(data)
    (dst / MANIFEST_FILE).write_text(json.dumps(data))
    return dst


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["tap_statistics"][0].update(tap="nope"), "names no tap; expected one of"),
    (lambda d: d["tap_statistics"][0].update(statistic="max"), "`statistic` should be one of"),
    (lambda d: d["tap_statistics"][0].update(width=4), "`width` should be equal to the tap's width 3, found 4"),
    (lambda d: d["tap_statistics"][1].update(width=121), "should be a multiple of the tap's width 3"),
    (lambda d: d["tap_statistics"][2].update(output="tap.0.input"), "is already the output of another tap"),
    (lambda d: d["tap_statistics"].append(dict(d["tap_statistics"][0], output="x")), "listed twice"),
    (lambda d: d["taps"][0].update(pooling="global_avg_std", width=6), "expected a tap pooled by `global_avg`"),
])
def test_error_malformed_tap_statistics(lab, tmp_path, edit, message):
    folder = _edited(lab[0], tmp_path / "b", edit)
    with pytest.raises(ValueError, match=message):
        load_manifest(folder)


def test_error_statistics_the_graph_or_bundle_lacks(lab, tmp_path):
    new, old, _, x, y = lab
    folder = _edited(new, tmp_path / "b", lambda d: d["tap_statistics"][2].update(output="stat.missing"))
    with pytest.raises(ValueError, match="manifest output `stat.missing` is not an output of the ONNX graph"):
        Backbone(folder)
    with pytest.raises(ValueError, match="asks for tap statistic\\(s\\) \\['std'\\], which the bundle does not offer"):
        finetune(Backbone(old), x, y, TrainConfig(epochs=2, tap_statistics="std"))
    adapter, _ = finetune(Backbone(new), x, y, TrainConfig(epochs=2, tap_statistics="std"))
    adapter.save(tmp_path / "a")
    with pytest.raises(ValueError, match="`tap_statistics`: asks for tap statistic"):
        load_adapter(tmp_path / "a", load_manifest(old))
