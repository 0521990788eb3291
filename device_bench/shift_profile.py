"""`python -m device_bench.shift_profile`: where edgelora's default fine-tune spends its time on a shift protocol.

    python -m device_bench.shift_profile --protocol har-mount --backbones cnn1d-bn,mlp --shots 5,20 --seeds 5

Runs `finetune` in this process (one thread: run it under the device profile's environment) on the same
draws as shift_bench, over the bundles shift_bench built (run it first), and times each stage by wrapping
the function that does it: the Skip-Cache fill (runtime/features.prepare), each re-calibration estimate,
the skip recipes' cross-validation (its budget extension included), the refit of the chosen recipe, the
deep tier's cross-validation and its refit. Prints, per backbone and shots, the median seconds of each stage
over the seeds, its share of the whole call, and how often the deep tier was considered and won. Seconds are
this process's CPU time (time.process_time: one thread, so other jobs' load does not inflate them).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from edgelora import Backbone, Predictor, TrainConfig, finetune
from edgelora.core import crossval, loop
from edgelora.runtime import deep, recalibrate, train

from . import shifts
from .profile import check_threads
from .shift_bench import OUT, parse_overrides, positive_ints

# stage name -> (object, attribute) whose calls it times
STAGES = {"cache fill": (train, "prepare"), "re-calibration estimates": (recalibrate, "estimate"),
          "skip cross-validation": (crossval, "cross_validate"), "refit": (loop, "fit"),
          "deep tier load": (deep, "load"), "deep cross-validation": (deep, "cross_validate"),
          "deep refit": (deep, "finetune_deep")}


@contextlib.contextmanager
def timed(spent: dict):
    """Within it, every STAGES function adds its CPU time to spent[stage]; restored on exit."""
    saved = {name: getattr(obj, attr) for name, (obj, attr) in STAGES.items()}

    def wrap(name, f):
        def timed_call(*args, **kwargs):
            t = time.process_time()
            try:
                return f(*args, **kwargs)
            finally:
                spent[name] += time.process_time() - t
        return timed_call
    try:
        for name, (obj, attr) in STAGES.items():
            setattr(obj, attr, wrap(name, saved[name]))
        yield spent
    finally:
        for name, (obj, attr) in STAGES.items():
            setattr(obj, attr, saved[name])


def profile_draw(backbone: Backbone, x, y, config: TrainConfig, test: tuple) -> dict:
    """One fine-tune: {stage: seconds}, "total", its accuracy on `test` (x, y), whether the deep tier ran."""
    spent = defaultdict(float)
    with timed(spent):
        t = time.process_time()
        adapter, history = finetune(backbone, x, y, config)
        spent["total"] = time.process_time() - t
    spent["accuracy"] = Predictor(backbone, adapter).evaluate(*test)["accuracy"]
    sel = history.selection or {}
    spent["deep considered"] = float(bool(sel.get("deep", {}).get("considered")))
    spent["deep won"] = float(history.chosen.get("form") == "deep")
    spent["deep projected"] = float(sel.get("deep", {}).get("projected_seconds") or 0.0)
    return dict(spent)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocol", required=True, choices=list(shifts.PROTOCOLS))
    ap.add_argument("--backbones", required=True, help="comma-separated backbones of the protocol")
    ap.add_argument("--shots", default="5,20")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="a TrainConfig field")
    ap.add_argument("--bundles", default=str(OUT / "bundles"))
    args = ap.parse_args(argv)
    check_threads()
    overrides, shots = parse_overrides(args.set), positive_ints(args.shots, "--shots")
    data = shifts.build(args.protocol)
    x_pool, y_pool = data["pool"]
    rows = []
    for name in [b for b in args.backbones.split(",") if b]:
        folder = Path(args.bundles) / args.protocol / name / "bundle"
        if not folder.is_dir():
            raise SystemExit(f"no bundle at {folder}; run `python -m device_bench.shift_bench --protocol "
                             f"{args.protocol} --backbones {name}` first")
        backbone = Backbone(folder, threads=1)
        for k in shots:
            draws = [profile_draw(backbone, x_pool[idx], y_pool[idx], TrainConfig(**{"seed": s, **overrides}), data["test"])
                     for s in range(args.seeds) for idx in [shifts.draw(y_pool, k, s)]]
            total = float(np.median([d["total"] for d in draws]))
            acc = 100 * np.array([d["accuracy"] for d in draws])
            row = {"backbone": name, "shots": k, "total": total, "accuracy": float(acc.mean()), "draws": draws}
            considered, won = (sum(d[key] for d in draws) for key in ("deep considered", "deep won"))
            projected = np.median([d["deep projected"] for d in draws])
            print(f"{name} {k}/class: accuracy {acc.mean():.1f} ± {acc.std():.1f} %, median {total:.2f} s; "
                  f"deep tier considered {considered:.0f}/{len(draws)}, won {won:.0f}, its cost projected "
                  f"(median) {projected:.2f} s")
            for d in draws:
                d["other"] = d["total"] - sum(d.get(stage, 0.0) for stage in STAGES if stage != "deep tier load")
            for stage in list(STAGES) + ["other"]:
                per = [d.get(stage, 0.0) for d in draws]
                share = sum(per) / sum(d["total"] for d in draws)
                print(f"  {stage:26s} median {np.median(per):6.2f} s  {100 * share:5.1f} % of the time")
            rows.append(row)
    print(json.dumps({"overrides": overrides, "rows": [{k: v for k, v in r.items() if k != "draws"} for r in rows]}))
    return rows


if __name__ == "__main__":
    main()
