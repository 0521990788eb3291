"""One method in its own process (so its peak RSS is its own): `python -m device_bench.worker SPEC.json`.

SPEC: {"method", "seeds": [..], "tasks": [{"name", "bundle", "data"}], "config": BenchConfig fields,
"profile": bool, "repeat": int (default 1), "max_address_space_mb": int | null}. Prints one JSON line:
imports' time and RSS, and per (seed, task) the record of the method's run(). Only the method's own engine is imported: torch is
never loaded in a numpy or edgelora process.
"""
from __future__ import annotations

import json
import sys
import time

T_START = time.perf_counter()

from .profile import cap_address_space, peak_rss_mb, rss_mb, torch_one_thread, worker_spec  # noqa: E402


def _runner(method: str):
    if method.startswith("torch-"):
        from . import torch_methods
        return torch_methods.run
    if method.startswith("ort-"):
        from . import ort_methods
        return ort_methods.run
    if method.startswith("np-"):
        from . import numpy_methods
        return numpy_methods.run
    from . import skip_methods
    return skip_methods.run


def main(argv: list[str]) -> int:
    if (spec := worker_spec(argv, "worker")) is None:
        return 2
    cap_address_space(spec.get("max_address_space_mb"))
    t = time.perf_counter()
    import numpy as np
    from .config import BenchConfig
    run = _runner(spec["method"])
    if spec["method"].startswith("torch-"):
        torch_one_thread()
    out = {"method": spec["method"], "import_seconds": time.perf_counter() - t,
           "rss_after_imports_mb": rss_mb(), "runs": []}
    cfg = BenchConfig(**spec["config"])
    kwargs = {"profile": spec.get("profile", True)} if spec["method"] in ("skip-lora", "skip2-lora") else {}
    for seed in spec["seeds"]:
        for task in spec["tasks"]:
            with np.load(task["data"], allow_pickle=False) as f:
                data = {k: f[k] for k in f.files}
            # repeat > 1: the same fine-tune again in this process; keep the run with the median time
            # (robust to a burst of load from other jobs); the first, cold run's time is kept too
            records = [run(spec["method"], task["bundle"], data, cfg, seed, **kwargs)
                       for _ in range(spec.get("repeat", 1))]
            record = sorted(records, key=lambda r: r["seconds"])[(len(records) - 1) // 2]
            record.update(cold_seconds=records[0]["seconds"], seconds_all=[r["seconds"] for r in records])
            out["runs"].append({"seed": seed, "task": task["name"], "n": int(len(data["y_ft"])), **record})
    out["peak_rss_mb"] = peak_rss_mb()
    out["worker_seconds"] = time.perf_counter() - T_START
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
