"""Peak memory of checking and loading a large ONNX backbone (a big initializer kept inside the .onnx file).

    python -m device_bench.big_onnx [--mb 1024] [--out bench_out/big_onnx]

Builds (once) a bundle from the demo backbone plus a (64, MB * 4096) weight that the graph uses (the input
times it, summed, times 0, is added to the logits, so the outputs stay the demo's), then measures in fresh processes the peak
RSS (VmHWM) and the RSS held at the end of: Python with edgelora, numpy and onnxruntime imported (what every command pays);
`verify_bundle` (the fingerprint and external-data check, which `merge` runs first); `Backbone(bundle)` and one
forward pass (what `eval`, `predict` and `finetune` do first).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "edgelora" / "data" / "demo_bundle"
STAGES = {
    "imports": "import edgelora.runtime.backbone",
    "verify_bundle": "from edgelora.files.bundle import verify_bundle; verify_bundle(BUNDLE)",
    "Backbone + 1 row": "import numpy as np; from edgelora import Backbone; bb = Backbone(BUNDLE); "
                        "bb.rows(np.zeros((1, 64), np.float32))",
}


def build(folder: Path, mb: int) -> Path:
    """The demo bundle with a used initializer of `mb` MB in its ONNX file."""
    import onnx
    from onnx import helper, numpy_helper

    from edgelora.files.bundle import load_manifest, write_bundle
    if (folder / "edgelora_bundle.json").is_file():
        return folder
    manifest = load_manifest(DEMO)
    model = onnx.load(str(DEMO / manifest.model_file))
    last = next(n for n in model.graph.node if list(n.output) == ["logits"])
    last.output[0] = "logits.plain"
    x = model.graph.input[0].name
    model.graph.initializer.extend([numpy_helper.from_array(np.ones((64, mb << 12), np.float32), "big"),
                                    numpy_helper.from_array(np.array([1], np.int64), "axis1"),
                                    numpy_helper.from_array(np.zeros((), np.float32), "zero")])
    model.graph.node.extend([helper.make_node("MatMul", [x, "big"], ["big.out"]),
                             helper.make_node("ReduceSum", ["big.out", "axis1"], ["big.sum"]),
                             helper.make_node("Mul", ["big.sum", "zero"], ["big.zero"]),
                             helper.make_node("Add", ["logits.plain", "big.zero"], ["logits"])])
    write_bundle(folder, model.SerializeToString(), manifest)
    return folder


def peak_mb(code: str, bundle: Path) -> tuple[float, float, float]:
    """Peak RSS (MB), RSS at the end (MB) and seconds of a fresh Python process running `code` (BUNDLE: the
    bundle's path). The peak is VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec."""
    script = f"BUNDLE = {str(bundle)!r}\n{code}\n" \
             "print(*(line.split()[1] for line in open('/proc/self/status') if line.startswith(('VmHWM', 'VmRSS'))))"
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                         env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    if out.returncode:
        raise RuntimeError(out.stderr)
    peak, now = (int(v) / 1024 for v in out.stdout.split()[-2:])
    return peak, now, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m device_bench.big_onnx", description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=int, default=1024, help="size of the big initializer (MB)")
    ap.add_argument("--out", type=Path, default=REPO / "bench_out" / "big_onnx")
    ap.add_argument("--repeats", type=int, default=1)
    a = ap.parse_args(argv)
    bundle = build(a.out / f"bundle_{a.mb}", a.mb)
    size = sum(p.stat().st_size for p in bundle.iterdir()) / 2**20
    print(f"bundle {bundle}: {size:.0f} MB")
    for stage, code in STAGES.items():
        runs = [peak_mb(code, bundle) for _ in range(a.repeats)]
        print(f"{stage:>18}: peak RSS " + ", ".join(f"{peak:.0f} MB" for peak, _, _ in runs) +
              f"; at the end {runs[-1][1]:.0f} MB ({', '.join(f'{s:.1f}' for _, _, s in runs)} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
