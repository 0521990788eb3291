"""The browser page (clients/js/web) in real headless browsers: Debian's chromium and firefox-esr, driven by
clients/js/tools/drive.mjs (puppeteer-core: CDP for Chromium, WebDriver BiDi for Firefox; nothing downloaded).

The page fine-tunes the demo on the recipe numpy chose (web/make_assets.sh) in a Web Worker on onnxruntime-web's
wasm; the adapter it hands back as downloads must load in `edgelora eval` with the Node client's accuracy and
equal numpy's parameters within 1e-4. Without the browsers these tests FAIL (CI installs them: .ci/run).
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgelora import Backbone, load_adapter
from device_bench.page_server import CLIENT, drive_page, serve_page
from tests.helpers import js_client

@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The page served over the demo's assets (written by web/make_assets.sh, as a user would)."""
    node = js_client()
    root = tmp_path_factory.mktemp("site")
    env = {"EDGELORA": f"{sys.executable} -m edgelora.cli", "PATH": str(Path(node).parent) + ":/usr/bin:/bin"}
    done = subprocess.run(["sh", str(CLIENT / "web" / "make_assets.sh"), str(root / "assets")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    server, url = serve_page(root / "site", root / "assets")
    yield node, root, url
    server.shutdown()


@pytest.fixture(scope="module")
def node_adapter(site, tmp_path_factory):
    """The Node client's adapter (onnxruntime-node) on the same kit and data, and its `edgelora eval` accuracy."""
    node, root, _ = site
    out = tmp_path_factory.mktemp("node") / "adapter"
    done = subprocess.run([node, str(CLIENT / "src" / "cli.js"), "train", "--bundle", str(root / "assets" / "bundle"),
                           "--kit", str(root / "assets" / "kit"), "--data", str(root / "assets" / "finetune.npz"),
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return out, evaluate(root, out)


def evaluate(root, adapter):
    out = subprocess.run([sys.executable, "-m", "edgelora.cli", "eval", str(root / "assets" / "bundle"), "--adapter",
                          str(adapter), "--data", str(root / "assets" / "test.npz"), "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)["accuracy"]


def drive(node, browser, url, out, screenshot=None, **kw):
    try:
        return drive_page(node, browser, url, out, screenshot, **kw)
    except FileNotFoundError as e:
        pytest.fail(str(e))


@pytest.mark.parametrize("browser", ["chromium", "firefox"])
def test_page_finetunes_the_demo_like_numpy_and_node(site, node_adapter, browser, tmp_path):
    node, root, url = site
    r = drive(node, browser, url, tmp_path / "adapter", tmp_path / "page.png")
    assert r["errors"] == [] and r["n"] == 400 and browser.replace("chromium", "chrome") in r["version"].lower()
    assert r["warmedAhead"] and r["timings"]["warmPasses"] >= 1  # warmed up at page load (src/warm.js)
    backbone = Backbone(root / "assets" / "bundle")
    got = load_adapter(tmp_path / "adapter", backbone.manifest)  # checksums, shapes, backbone identity
    numpy_adapter = load_adapter(root / "assets" / "adapter_numpy", backbone.manifest)
    assert got.config.training["engine"] == "js-browser-wasm" and got.config.r == numpy_adapter.config.r
    assert np.abs(got.flat - numpy_adapter.flat).max() <= 1e-4
    _, node_accuracy = node_adapter
    assert evaluate(root, tmp_path / "adapter") == pytest.approx(node_accuracy, abs=1e-9)
    assert r["after"]["accuracy"] == pytest.approx(node_accuracy, abs=1e-9)  # what the page shows
    assert r["before"]["accuracy"] < 0.6 < node_accuracy
    png = (tmp_path / "page.png").read_bytes()
    width = int.from_bytes(png[16:20], "big")  # the phone-sized viewport (390 px; Firefox leaves out its scroll bar)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and 370 <= width <= 390, width


@pytest.mark.parametrize("browser", ["chromium", "firefox"])
def test_page_learns_digits_drawn_with_touch(site, browser, tmp_path):
    node, root, url = site
    r = drive(node, browser, url + "&epochs=10", tmp_path / "adapter", draw=20, demo=False)
    assert r["drawn"] == 20 and r["n"] == 20 and r["errors"] == []  # every stroke and tap arrived as touch input
    got = load_adapter(tmp_path / "adapter", Backbone(root / "assets" / "bundle").manifest)
    assert got.config.training["samples"]["train"] == 20 and np.abs(got.flat).max() > 0
    assert 0 <= r["after"]["accuracy"] <= 1 and r["before"]["accuracy"] < 0.6


def test_a_click_stops_the_warm_up_at_load(site, tmp_path):
    """A user who clicks "Fine-tune" during the warm-up at load (here one asked to run 60 s) does not wait for it:
    the worker stops it at its next pass (src/warm.js) and fine-tunes on the code it warmed (Chromium)."""
    node, root, url = site
    r = drive(node, "chromium", url, tmp_path / "adapter", query="&warmup=60&settle=0", wait_warm=False)
    assert r["errors"] == [] and r["n"] == 400 and r["warmedAhead"]
    assert 0 < r["timings"]["warm"] < 30 and r["timings"]["warmPasses"] >= 1
    assert r["after"]["accuracy"] > 0.6


def test_page_works_offline_after_the_first_load(site, tmp_path):
    """With its service worker, the page fine-tunes again with the server gone (Chromium)."""
    node, root, _ = site
    server, url = serve_page(tmp_path / "site", root / "assets")  # a server of its own, to stop
    url = url.replace("&sw=0", "")
    try:
        online = drive(node, "chromium", url, tmp_path / "a", visits=2, profile=tmp_path / "profile")
    finally:
        server.shutdown()
        server.server_close()
    offline = drive(node, "chromium", url, tmp_path / "b", profile=tmp_path / "profile")
    assert offline["after"]["accuracy"] == online["after"]["accuracy"] > 0.6
    assert (tmp_path / "b" / "adapter_model.safetensors").read_bytes() == (tmp_path / "a" / "adapter_model.safetensors").read_bytes()


def test_error_the_page_reports_a_kit_for_another_backbone(site, tmp_path):
    node, root, url = site
    other = root / "other"
    shutil.copytree(root / "assets", other, ignore=shutil.ignore_patterns("adapter_numpy"))
    contract = json.loads((other / "kit" / "kit.json").read_text())
    contract["backbone"]["fingerprint"] = "sha256:" + "0" * 64
    (other / "kit" / "kit.json").write_text(json.dumps(contract))
    (root / "site" / "other").symlink_to(other, target_is_directory=True)
    with pytest.raises(RuntimeError, match="was built for another backbone: expected fingerprint"):
        drive(node, "chromium", url.replace("../assets/", "../other/"), tmp_path / "a")
    assert not any((tmp_path / "a").iterdir())
