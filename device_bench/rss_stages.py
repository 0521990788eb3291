"""Where a fine-tune process's memory goes: `python -m device_bench.rss_stages BUNDLE DATA.npz` runs a fine-tune
(edgelora's defaults, as `edgelora finetune`) in this fresh process and prints, as one JSON line, VmRSS, RssAnon
(private memory), RssFile (mapped files: libraries, shareable and reclaimable) and VmHWM (the peak so far), in MB,
after each stage. Imports nothing before its first mark but json, sys and pathlib."""
from __future__ import annotations

import json
import sys
from pathlib import Path

FIELDS = ("VmRSS", "RssAnon", "RssFile", "VmHWM")


def main(bundle: str, data: str) -> dict:
    marks = []

    def mark(stage: str) -> None:
        s = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        marks.append({"stage": stage, **{k: round(int(s[k].split()[0]) / 1024, 1) for k in FIELDS}})
    mark("interpreter")
    import numpy as np
    mark("import numpy")
    import onnxruntime  # noqa: F401
    mark("import onnxruntime")
    import safetensors.numpy  # noqa: F401
    mark("import safetensors")
    import edgelora.cli.finetune  # noqa: F401  - what `edgelora finetune` imports
    from edgelora import Backbone, TrainConfig
    from edgelora.runtime.features import prepare
    from edgelora.runtime.train import finetune_features
    mark("import edgelora (finetune)")
    backbone = Backbone(bundle)
    mark("onnxruntime session")
    with np.load(data, allow_pickle=False) as f:
        x, y = f["x"], f["y"]
    mark("read the data")
    config = TrainConfig()
    features, targets, split = prepare(backbone, x, y, config)
    mark("Skip-Cache fill")
    finetune_features(features, targets, split, config)
    mark("cross-validation and refit")
    return {"stages": marks, "loaded": sorted(m for m in ("onnx", "hashlib", "ml_dtypes", "torch") if m in sys.modules)}


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m device_bench.rss_stages BUNDLE DATA.npz")
    print(json.dumps(main(*sys.argv[1:])))
