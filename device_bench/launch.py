"""Start one worker process per method run, with the device profile, and collect its JSON report."""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .profile import device_env

REPO = Path(__file__).resolve().parents[1]
_ids = itertools.count()


def spawn(spec: dict, workdir: Path, timeout: float = 3600, module: str = "device_bench.worker") -> dict:
    """Run `python -m MODULE SPEC.json` (a worker) on `spec`; returns its report plus the process wall time."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"spec-{next(_ids):04d}-{spec['method']}.json"
    path.write_text(json.dumps(spec, indent=1))
    env = device_env()
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    t = time.perf_counter()
    python = spec.get("python") or sys.executable   # the onnxruntime-training peer has its own venv
    proc = subprocess.run([python, "-m", module, str(path)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"worker for {spec['method']} failed (exit {proc.returncode}, spec {path}):\n"
                           f"{proc.stderr[-3000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    report["process_seconds"] = wall
    return report
