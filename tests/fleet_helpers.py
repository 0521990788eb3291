"""What the fleet tests share: the demo bundle, its adapter spec and the devices that hold the demo's digit
scans (a LocalGrid's node list; the scans are conftest's `demo` fixture)."""
from pathlib import Path

import numpy as np

from edgelora.core.shape import AdapterShape
from edgelora.files.bundle import load_manifest
from edgelora.fleet.update import spec_for

BUNDLE = Path(__file__).resolve().parents[1] / "edgelora" / "data" / "demo_bundle"
MANIFEST = load_manifest(BUNDLE)
SPEC = spec_for(MANIFEST, AdapterShape(4))


def device_nodes(root: Path, demo, n: int = 4, faults=(), fault_stride: int | None = None) -> list[dict]:
    """n devices, each a 1/n share of the demo's new-scanner scans, then one device per fault
    (device_bench/faulty_client) with every `fault_stride`-th scan from device i % n's first (default n: the
    same scans as that honest device; 2 n: half of them, so its honest update differs from every other)."""
    x, y = demo["finetune"]
    nodes = []
    for i in range(n + len(faults)):
        part = slice(i % n, None, n if i < n else fault_stride or n)
        np.savez(root / f"d{i}.npz", x=x[part], y=y[part])
        nodes.append({"bundle": str(BUNDLE), "data": str(root / f"d{i}.npz"), "workdir": str(root / f"w{i}")})
        if i >= n:
            nodes[-1]["fault"] = faults[i - n]
    return nodes
