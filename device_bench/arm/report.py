"""Reports for device_bench/arm/run.sh: installed wheels and sizes, a pytest junit summary, aarch64 vs x86_64.

    python device_bench/arm/report.py wheels VENV          distributions installed in VENV, sizes on disk
    python device_bench/arm/report.py junit JUNIT.xml      ran / passed / skipped / failed, skip reasons
    python device_bench/arm/report.py agree OUT            adapters and accuracies of OUT/x86 vs OUT/arm

Standard library only for `wheels` and `junit` (it runs inside the emulated root); `agree` needs numpy and
safetensors. Exit status 1 when the suite failed or the two machines disagree.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from importlib import metadata
from pathlib import Path

TOLERANCE = 1e-5        # adapters agree within 1e-5, accuracies exactly
RUNTIME = {"numpy", "onnxruntime", "onnx", "safetensors"}


def wheel_sizes(venv: str | os.PathLike) -> list[tuple[str, str, int]]:
    """(name, version, bytes on disk) of every distribution in the venv's site-packages, largest first."""
    sites = sorted(Path(venv).glob("lib/python*/site-packages"))
    if not sites:
        raise FileNotFoundError(f"{venv}: expected a venv with lib/python*/site-packages, found none")
    rows = []
    for dist in metadata.distributions(path=[str(s) for s in sites]):
        size = 0
        for f in dist.files or []:
            p = Path(dist.locate_file(f))
            if p.is_file():
                size += p.stat().st_size
        rows.append((dist.metadata["Name"], dist.version, size))
    return sorted(rows, key=lambda r: -r[2])


def print_wheels(venv: str) -> int:
    rows = wheel_sizes(venv)
    print(f"platform {platform.machine()}, Python {platform.python_version()}, venv {venv}")
    names = {n.lower() for n, _, _ in rows}
    print(f"torch installed: {'torch' in names}")
    for name, version, size in rows:
        print(f"  {name:<24} {version:<14} {size / 1e6:8.1f} MB")
    runtime = sum(s for n, _, s in rows if n.lower() in RUNTIME)
    print(f"  total {sum(s for _, _, s in rows) / 1e6:.1f} MB; the runtime alone (numpy, onnxruntime, onnx, "
          f"safetensors) {runtime / 1e6:.1f} MB")
    return 0


def junit_summary(path: str | os.PathLike) -> dict:
    """Counts, failed test ids and skip reasons (with counts) from a pytest junit XML file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: expected pytest's junit XML, found no file (did pytest run?)")
    counts: Counter = Counter()
    failed, skips = [], Counter()
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        if kinds & {"failure", "error"}:
            counts["failed"] += 1
            failed.append(name)
        elif "skipped" in kinds:
            counts["skipped"] += 1
            skips[case.find("skipped").get("message", "")] += 1
        else:
            counts["passed"] += 1
    return {"ran": sum(counts.values()), **{k: counts[k] for k in ("passed", "skipped", "failed")},
            "failed_tests": failed, "skip_reasons": dict(skips.most_common())}


def print_junit(path: str, seconds: float | None) -> int:
    s = junit_summary(path)
    took = f" in {seconds:.0f} s" if seconds is not None else ""
    print(f"suite: {s['ran']} tests{took}: {s['passed']} passed, {s['skipped']} skipped, {s['failed']} failed")
    for name in s["failed_tests"]:
        print(f"  FAILED {name}")
    for reason, n in s["skip_reasons"].items():
        print(f"  skipped {n:3d}: {reason[:150]}")
    return 1 if s["failed"] or not s["ran"] else 0


def adapter_diff(a: str | os.PathLike, b: str | os.PathLike) -> dict[str, float]:
    """Max absolute difference per tensor between two saved adapters with the same tensors."""
    from safetensors.numpy import load_file
    ta, tb = (load_file(str(Path(p) / "adapter_model.safetensors")) for p in (a, b))
    if sorted(ta) != sorted(tb):
        raise ValueError(f"adapters hold different tensors: {sorted(ta)} in {a}, {sorted(tb)} in {b}")
    import numpy as np
    return {k: float(np.max(np.abs(ta[k].astype(np.float64) - tb[k]))) if ta[k].size else 0.0 for k in sorted(ta)}


def print_agree(out: str) -> int:
    """Compare the demo reports and the seeded fine-tune of OUT/x86 (this host) and OUT/arm (aarch64)."""
    o, bad = Path(out), 0
    if (o / "demo-arm.json").is_file():
        x86, arm = (json.loads((o / f"demo-{m}.json").read_text())["accuracy"] for m in ("x86", "arm"))
        for k in sorted(x86):                    # lab scanner, new scanner before and after fine-tuning
            same = x86[k] == arm.get(k)
            bad += not same
            print(f"demo accuracy {k:<7} x86_64 {x86[k]:.6f}  aarch64 {arm.get(k, float('nan')):.6f}  "
                  f"{'same' if same else 'DIFFERENT'}")
    if (o / "arm" / "eval.json").is_file():
        diff = adapter_diff(o / "x86" / "adapter", o / "arm" / "adapter")
        worst = max(diff.values())
        ex, ea = (json.loads((o / m / "eval.json").read_text())["accuracy"] for m in ("x86", "arm"))
        bad += worst > TOLERANCE or ex != ea
        print(f"seeded fine-tune: adapters differ by at most {worst:.2e} over {len(diff)} tensors "
              f"(tolerance {TOLERANCE:g}): {'PASS' if worst <= TOLERANCE else 'FAIL'}")
        print(f"  test accuracy x86_64 {ex:.6f}, aarch64 {ea:.6f}: {'same' if ex == ea else 'DIFFERENT'}")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("wheels").add_argument("venv")
    j = sub.add_parser("junit")
    j.add_argument("xml")
    j.add_argument("--seconds", type=float)
    sub.add_parser("agree").add_argument("out")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "wheels":
            return print_wheels(a.venv)
        if a.cmd == "junit":
            return print_junit(a.xml, a.seconds)
        return print_agree(a.out)
    except (FileNotFoundError, ValueError) as e:
        print(f"report: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
