"""A small board's memory: the fan fine-tune and the demo inside a 512 MB address-space limit (RLIMIT_AS).

    python -m device_bench.memory512 [--limit-mb 512] [--bundle artifacts/bundles/fan_mlp] [--out DIR]

A Raspberry Pi Zero 2 W has 512 MB of RAM for everything. Each run is `edgelora ...` as a device runs it,
in its own process whose address space (not just its resident memory: every mapping, reserved or not)
is capped at the limit before edgelora is imported; that is stricter than the RAM itself. Prints each
run's exit status, peak RSS (VmHWM, read in the process at exit) and the head-room left under the limit.
The fan bundle is the reference MLP (`python -m device_bench.reference --out artifacts/bundles`).
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import resource
import runpy
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MB = 2**20
TAG = "memory512:"


def child(limit_mb: int, argv: list[str]) -> None:
    """Cap the address space, run `edgelora ARGV` in this process, print the peaks on stderr at exit (an atexit
    handler: as the `edgelora` process, it ends in main(), edgelora/cli/lifetime.py)."""
    resource.setrlimit(resource.RLIMIT_AS, (limit_mb * MB, limit_mb * MB))
    atexit.register(_print_peaks)
    code = 0
    try:
        sys.argv = ["edgelora", *argv]
        runpy.run_module("edgelora.cli", run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except MemoryError:
        code = 137
    sys.exit(code)


def _print_peaks() -> None:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    kb = {k: int(status[k].split()[0]) for k in ("VmHWM", "VmPeak")}
    print(TAG, json.dumps(kb), file=sys.stderr, flush=True)


def limit_is_enforced() -> bool:
    """Whether this machine enforces RLIMIT_AS (qemu-user, for one, ignores it): a capped child maps 2 GB."""
    code = ("import mmap, resource; resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30)); "
            "mmap.mmap(-1, 2**31).close()")
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode != 0


def measure(name: str, argv: list[str], limit_mb: int, cwd: Path) -> dict:
    """Run `edgelora ARGV` under the limit in a fresh interpreter; exit status, peaks and head-room."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "device_bench.memory512", "--child", str(limit_mb), "--", *argv],
                       capture_output=True, text=True, cwd=cwd, env=env)
    seconds = time.perf_counter() - t
    peaks = [json.loads(line[len(TAG):]) for line in p.stderr.splitlines() if line.startswith(TAG)]
    hwm = peaks[0]["VmHWM"] / 1024 if peaks else float("nan")
    vm = peaks[0]["VmPeak"] / 1024 if peaks else float("nan")
    errors = [line for line in p.stderr.splitlines() if not line.startswith(TAG)][-3:]
    return {"run": name, "command": "edgelora " + " ".join(argv), "exit_status": p.returncode,
            "peak_rss_mb": round(hwm, 1), "peak_address_space_mb": round(vm, 1),
            "headroom_mb": round(limit_mb - hwm, 1), "seconds": round(seconds, 2), "stdout": p.stdout.strip(),
            "stderr_tail": errors}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        if len(argv) < 3 or argv[2] != "--":
            raise SystemExit("memory512 --child LIMIT_MB -- EDGELORA_ARGS...")
        child(int(argv[1]), argv[3:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit-mb", type=int, default=512, help="address-space limit per process (MB)")
    ap.add_argument("--bundle", type=Path, default=REPO / "artifacts" / "bundles" / "fan_mlp",
                    help="the fan protocol's bundle (python -m device_bench.reference --out artifacts/bundles)")
    ap.add_argument("--out", type=Path, default=REPO / "bench_out" / "memory512", help="data, adapters, results")
    a = ap.parse_args(argv)
    if a.limit_mb <= 0:
        ap.error(f"--limit-mb: expected a positive number of MB, found {a.limit_mb}")
    if not (a.bundle / "edgelora_bundle.json").is_file():
        ap.error(f"--bundle: expected a bundle folder with edgelora_bundle.json, found none at {a.bundle} "
                 "(build it with: python -m device_bench.reference --out artifacts/bundles)")
    if not limit_is_enforced():
        print("memory512: RLIMIT_AS is not enforced on this machine (an emulator such as qemu-user?): the runs below "
              "were not limited", file=sys.stderr)
    from device_bench.protocols import fan
    a.out.mkdir(parents=True, exist_ok=True)
    data = fan()                                   # outside the limit: the device receives these arrays
    for split in ("finetune", "test"):
        np.savez(a.out / f"fan_{split}.npz", x=data[split][0], y=data[split][1])
    b = str(a.bundle.resolve())
    runs = [
        ("fan fine-tune", ["finetune", b, "--data", "fan_finetune.npz", "--out", "fan_adapter", "--json"]),
        ("fan eval", ["eval", b, "--adapter", "fan_adapter", "--data", "fan_test.npz", "--json"]),
        ("demo", ["demo", "--no-plot", "--json"]),
    ]
    results = [measure(name, args, a.limit_mb, a.out) for name, args in runs]
    (a.out / "results.json").write_text(json.dumps(results, indent=1, sort_keys=True))
    print(f"RLIMIT_AS {a.limit_mb} MB per process (python {sys.version.split()[0]}, numpy {np.__version__}); "
          f"results in {a.out}/results.json")
    print(f"{'run':<14} {'exit':>4} {'peak RSS':>10} {'head-room':>10} {'peak VM':>9} {'wall s':>7}  result")
    for r in results:
        out = json.loads(r["stdout"]) if r["exit_status"] == 0 and r["stdout"].startswith("{") else {}
        cv = (out.get("cross_validation") or {}).get("chosen", {}).get("score")
        if isinstance(out.get("accuracy"), dict):                        # the demo: lab / before / after
            what = f"test accuracy {out['accuracy']['after']:.4f} (before {out['accuracy']['before']:.4f})"
        elif "accuracy" in out:
            what = f"test accuracy {out['accuracy']:.4f}"
        elif cv is not None:
            what = f"cross-validated accuracy {cv:.4f}"
        else:
            what = " | ".join(r["stderr_tail"])[:80]
        print(f"{r['run']:<14} {r['exit_status']:>4} {r['peak_rss_mb']:>7.1f} MB {r['headroom_mb']:>7.1f} MB "
              f"{r['peak_address_space_mb']:>6.0f} MB {r['seconds']:>7.2f}  {what}")
    return 0 if all(r["exit_status"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
