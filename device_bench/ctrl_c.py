"""Ctrl-C at every moment of an `edgelora finetune`: what the user sees.

    python -m device_bench.ctrl_c DIR --repeats 10     # DIR from `edgelora demo --no-plot --save-data DIR`

Sends SIGINT to the real console script (started with SIGINT at its default, as a terminal's foreground job)
at fixed delays after it was started and counts the outcomes: one
line and exit 130 (edgelora's handling), killed by the signal with nothing printed (before Python installs
its handler), or a traceback (Python's own start-up, before edgelora's first line runs). It also reports how
long that start-up lasts here: Python's `-X importtime` timings up to edgelora.cli.ctrl_c.
"""
from __future__ import annotations

import argparse
import collections
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DELAYS = [0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.12, 0.2, 0.3, 0.5, 0.8, 1.2, 2.0]


def command(files: Path, out: Path) -> list[str]:
    return [str(Path(sys.executable).with_name("edgelora")), "finetune", str(files / "bundle"), "--data",
            str(files / "finetune.npz"), "--out", str(out), "--epochs", "3000", "--cv-folds", "0", "--form", "skip",
            "--tap-scaling", "none"]


def outcome(files: Path, delay: float) -> str:
    """What one Ctrl-C `delay` s after the start gave."""
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(command(files, Path(tmp) / "ad"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        start = time.monotonic()
        while time.monotonic() - start < delay:
            pass
        proc.send_signal(signal.SIGINT)
        err = proc.communicate()[1]
    if "Traceback" in err:
        return f"traceback, exit {proc.returncode}"
    if proc.returncode == -signal.SIGINT and not err:
        return "killed by SIGINT, nothing printed"
    lines = err.strip().splitlines()
    return f"{len(lines)} line(s), exit {proc.returncode}" + (f": {lines[0][:60]}..." if lines else "")


def unprotected_ms(files: Path) -> tuple[float, float]:
    """Milliseconds of imports before edgelora's handler is set: Python's site, and the console script's own."""
    with tempfile.TemporaryDirectory() as tmp:
        err = subprocess.run(command(files, Path(tmp) / "ad") + ["--epochs", "1"], capture_output=True, text=True,
                             env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}).stderr
    site = before = 0.0
    for line in err.splitlines():
        if not line.startswith("import time:") or "|" not in line or "self [us]" in line:
            continue
        self_us, total_us, name = line.split(":", 1)[1].split("|")
        if name.strip() == "site":
            site = int(total_us) / 1000
        before += int(self_us) / 1000  # every import finished so far, each counted once
        if name.strip() == "edgelora.cli.ctrl_c":
            return site, before
    return site, before


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m device_bench.ctrl_c", description=__doc__.split("\n")[0])
    parser.add_argument("files", type=Path, help="from `edgelora demo --no-plot --save-data DIR`")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    print(f"load average {os.getloadavg()[0]:.2f}")
    for _ in range(3):
        site, before = unprotected_ms(args.files)
        print(f"imports before edgelora's handler: {before:.0f} ms (site and its .pth files {site:.0f} ms)")
    total = collections.Counter()
    for delay in DELAYS:
        seen = collections.Counter(outcome(args.files, delay) for _ in range(args.repeats))
        for kind, n in seen.items():
            total[kind.split(":")[0]] += n
        print(f"{delay:5.3f} s: " + "; ".join(f"{n} x {k}" for k, n in seen.most_common()))
    print("all:", dict(total), f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
