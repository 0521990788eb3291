"""A static server for the browser page (what `python -m http.server` does), in a thread, for tests and benchmarks.

The served root holds `src/` and `web/` (links to clients/js) and `assets/` (a folder with bundle/, kit/,
finetune.npz and test.npz), so the page's URL is `http://127.0.0.1:PORT/web/?assets=../assets/`.
"""
from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

CLIENT = Path(__file__).resolve().parents[1] / "clients" / "js"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    isolate = False  # send the cross-origin isolation headers (COOP/COEP): the page may then use wasm threads

    def log_message(self, *args):
        pass

    def end_headers(self):
        if self.isolate:
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()


class _Isolated(_Quiet):
    isolate = True


def serve_page(root: Path, assets: Path, isolate: bool = False) -> tuple[http.server.ThreadingHTTPServer, str]:
    """(server, page URL) over a new folder `root` linking the page, its modules and `assets`; shut it down after.
    `isolate`: serve with COOP/COEP headers (a cross-origin-isolated page, where onnxruntime-web may use threads)."""
    root.mkdir(parents=True, exist_ok=False)
    for name in ("src", "web"):
        (root / name).symlink_to(CLIENT / name, target_is_directory=True)
    (root / "assets").symlink_to(Path(assets).resolve(), target_is_directory=True)
    handler = functools.partial(_Isolated if isolate else _Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/web/?assets=../assets/&sw=0"  # sw=0: every run cold


BROWSERS = {"chromium": "/usr/bin/chromium", "firefox": "/usr/bin/firefox-esr"}


def drive_page(node: str, browser: str, url: str, out: Path, screenshot: Path | None = None,
               query: str = "", visits: int = 1, draw: int = 0, demo: bool = True, profile: Path | None = None,
               wait_warm: bool = True) -> dict:
    """Fine-tune on the page in a headless `browser` (clients/js/tools/drive.mjs): its JSON result (of the last of
    `visits` fine-tunes in one profile), the adapter's downloads in `out`. `draw`: digits drawn with touch first;
    `demo`: load the demo's scans too; `wait_warm` False: click without waiting for the warm-up at load. `profile`: keep the browser profile in this folder (default: a fresh one). Raises FileNotFoundError without the browser, RuntimeError if the page fails."""
    import json
    import subprocess
    if not Path(BROWSERS[browser]).exists():
        raise FileNotFoundError(f"{BROWSERS[browser]} is missing: apt-get install -y chromium firefox-esr (.ci/run does)")
    args = [node, str(CLIENT / "tools" / "drive.mjs"), "--browser", browser, "--url", url + query, "--out", str(out),
            "--visits", str(visits), "--draw", str(draw), "--demo", "1" if demo else "0", "--wait-warm", str(int(wait_warm))] + \
        (["--profile", str(profile)] if profile else [])
    done = subprocess.run(args + (["--screenshot", str(screenshot)] if screenshot else []), capture_output=True,
                          text=True, timeout=300)
    if done.returncode:
        raise RuntimeError(f"{browser}: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
