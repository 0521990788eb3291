"""The browser page (clients/js/web) in real headless browsers: Debian's chromium and firefox-esr, driven by
clients/js/tools/drive.mjs (puppeteer-core: CDP for Chromium, WebDriver BiDi for Firefox; nothing downloaded).

The page fine-tunes the demo on the recipe numpy chose (web/make_assets.sh) in a Web Worker on onnxruntime-web's
wasm; the adapter it hands back as downloads must load in `edgelora eval` with the Node client's accuracy and
equal numpy's parameters within 1e-4. Without the browsers these tests FAIL (CI installs them: .ci/run).
"""
import functools
import http.server
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from edgelora import Backbone, load_adapter
from edgelora.cli import main
from tests.helpers import js_client

CLIENT = Path(__file__).resolve().parent.parent / "clients" / "js"
BROWSERS = {"chromium": "/usr/bin/chromium", "firefox": "/usr/bin/firefox-esr"}


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A static server (python's http.server) over the page and src/, with the demo's assets in assets/."""
    node = js_client()
    root = tmp_path_factory.mktemp("site")
    for name in ("src", "web"):
        (root / name).symlink_to(CLIENT / name, target_is_directory=True)
    env = {"EDGELORA": f"{sys.executable} -m edgelora.cli", "PATH": str(Path(node).parent) + ":/usr/bin:/bin"}
    done = subprocess.run(["sh", str(CLIENT / "web" / "make_assets.sh"), str(root / "assets")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield node, root, f"http://127.0.0.1:{server.server_address[1]}/web/?assets=../assets/&sw=0"
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


def evaluate(root, adapter, capsys=None):
    out = subprocess.run([sys.executable, "-m", "edgelora.cli", "eval", str(root / "assets" / "bundle"), "--adapter",
                          str(adapter), "--data", str(root / "assets" / "test.npz"), "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)["accuracy"]


def drive(node, browser, url, out, screenshot=None):
    if not Path(BROWSERS[browser]).exists():
        pytest.fail(f"{BROWSERS[browser]} is missing: apt-get install -y chromium firefox-esr (.ci/run does)")
    args = [node, str(CLIENT / "tools" / "drive.mjs"), "--browser", browser, "--url", url, "--out", str(out)]
    done = subprocess.run(args + (["--screenshot", str(screenshot)] if screenshot else []), capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("browser", sorted(BROWSERS))
def test_page_finetunes_the_demo_like_numpy_and_node(site, node_adapter, browser, tmp_path):
    node, root, url = site
    r = drive(node, browser, url, tmp_path / "adapter", tmp_path / "page.png")
    assert r["errors"] == [] and r["n"] == 400 and browser.replace("chromium", "chrome") in r["version"].lower()
    backbone = Backbone(root / "assets" / "bundle")
    got = load_adapter(tmp_path / "adapter", backbone.manifest)  # checksums, shapes, backbone identity
    numpy_adapter = load_adapter(root / "assets" / "adapter_numpy", backbone.manifest)
    assert got.config.training["engine"] == "js-browser-wasm" and got.config.r == numpy_adapter.config.r
    assert np.abs(got.flat - numpy_adapter.flat).max() <= 1e-4
    node_path, node_accuracy = node_adapter
    assert evaluate(root, tmp_path / "adapter") == pytest.approx(node_accuracy, abs=1e-9)
    assert r["after"]["accuracy"] == pytest.approx(node_accuracy, abs=1e-9)  # what the page shows
    assert r["before"]["accuracy"] < 0.6 < node_accuracy
    png = (tmp_path / "page.png").read_bytes()
    width = int.from_bytes(png[16:20], "big")  # the phone-sized viewport (390 px; Firefox leaves out its scroll bar)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and 370 <= width <= 390, width


def test_error_the_page_reports_a_kit_for_another_backbone(site, tmp_path):
    node, root, url = site
    other = root / "other"
    shutil.copytree(root / "assets", other, ignore=shutil.ignore_patterns("adapter_numpy"))
    contract = json.loads((other / "kit" / "kit.json").read_text())
    contract["backbone"]["fingerprint"] = "sha256:" + "0" * 64
    (other / "kit" / "kit.json").write_text(json.dumps(contract))
    args = [node, str(CLIENT / "tools" / "drive.mjs"), "--browser", "chromium", "--url",
            url.replace("../assets/", "../other/"), "--out", str(tmp_path / "a")]
    done = subprocess.run(args, capture_output=True, text=True, timeout=240)
    assert done.returncode == 1 and "was built for another backbone: expected fingerprint" in done.stderr
    assert not any((tmp_path / "a").iterdir())
