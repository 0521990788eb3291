"""One method of the shift benchmark in its own process (its peak RSS is its own):
`python -m device_bench.shift_worker SPEC.json`.

SPEC: {"method": "edgelora" | "torch-ft-all" | "peft-lora", "folder": a shift_models folder (bundle/,
model.pt), "data": the protocol's .npz (x_pool, y_pool, x_te, y_te, mean, std), "runs": [{"shots", "seed",
"idx"}], "overrides": TrainConfig fields}. Prints one JSON line: imports' time and RSS, one record per run,
the peak RSS. The edgelora process imports no torch; it also reports the backbone's accuracy with no
fine-tuning.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .profile import peak_rss_mb, rss_mb, torch_one_thread, worker_spec


def edgelora_run(backbone, data: dict, idx, seed: int, overrides: dict) -> dict:
    """`edgelora.finetune` exactly as shipped (TrainConfig defaults, seeded, plus `overrides`)."""
    from edgelora import Predictor, TrainConfig, finetune
    config = TrainConfig(**{"seed": seed, **overrides})
    t, c = time.perf_counter(), time.process_time()
    adapter, history = finetune(backbone, data["x_pool"][idx], data["y_pool"][idx], config)
    call, cpu = time.perf_counter() - t, time.process_time() - c
    record = {"seconds": history.cache_seconds + history.train_seconds, "call_seconds": call, "cpu_seconds": cpu,
              "accuracy": Predictor(backbone, adapter).evaluate(data["x_te"], data["y_te"])["accuracy"],
              "trainable_params": int(adapter.flat.size), "chosen": history.chosen,
              "tap_statistics": list(getattr(adapter.config, "tap_statistics", ()))}
    if history.selection:
        sel = history.selection
        record.update(cv_estimate=sel["chosen"]["score"], cv_helps=sel["helps"],
                      recalibration=sel.get("recalibration", {}).get("chosen", "none"),
                      deep={k: sel["deep"].get(k) for k in ("considered", "won", "seconds")} if "deep" in sel else {},
                      budget={k: sel["budget"].get(k) for k in ("marks", "stopped")} if "budget" in sel else {})
        deep = sel.get("deep", {})   # the tier rule's inputs (runtime/deep.py), to weigh other rules
        record["deep_tier"] = {k: deep.get(k) for k in ("considered", "won", "skip_score", "skip_spread", "deep_score",
                                                        "deep_spread", "needed", "unavailable", "deep_folds")
                              if k in deep}
    return record


def main(argv: list[str]) -> int:
    if (spec := worker_spec(argv, "shift_worker")) is None:
        return 2
    t = time.perf_counter()
    import numpy as np
    method, folder = spec["method"], spec["folder"]
    if method == "edgelora":
        from edgelora import Backbone, Predictor
        backbone = Backbone(Path(folder) / "bundle", threads=1)
    else:
        from . import shift_torch
        torch_one_thread()
    out = {"method": method, "import_seconds": time.perf_counter() - t, "rss_after_imports_mb": rss_mb(), "runs": []}
    with np.load(spec["data"], allow_pickle=False) as f:
        data = {k: f[k] for k in f.files}
    if method == "edgelora":
        out["base_accuracy"] = Predictor(backbone).evaluate(data["x_te"], data["y_te"])["accuracy"]
    for run in spec["runs"]:
        idx = np.asarray(run["idx"], np.int64)
        record = (edgelora_run(backbone, data, idx, run["seed"], spec.get("overrides", {})) if method == "edgelora"
                  else shift_torch.run(method, folder, data, idx, run["seed"]))
        out["runs"].append({"shots": run["shots"], "seed": run["seed"], "n": int(len(idx)), **record})
    out["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
