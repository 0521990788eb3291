"""`python -m device_bench.deep_recal`: the deep tier alone (no cross-validation, its default budget) over
each normalisation re-estimation before training, on a shift protocol's draws (device_bench/shifts.py).

    python -m device_bench.deep_recal --protocol har-mount --backbone cnn1d-bn --shots 20 --seeds 5 \
        --kinds none,bn,input,both [--set r=8] [--epochs 60]

Per kind (runtime/recalibrate: "none" = the lab's statistics; "bn" = batch-norm re-estimated on the samples,
what runtime/deep.py does; "input"; "both"), trains a deep adapter per seed on the same draw and prints its
accuracy on the shifted test set, then mean +- std over seeds. One thread (device_bench.profile).
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from .profile import THREADS_ENV

for _k, _v in THREADS_ENV.items():   # before numpy: one thread, as on the device
    os.environ[_k] = _v

import numpy as np  # noqa: E402

from edgelora import Backbone, TrainConfig  # noqa: E402
from edgelora.core import deep_loop  # noqa: E402
from edgelora.core.lora import split  # noqa: E402
from edgelora.graphs.onnx_chain import load_chain  # noqa: E402
from edgelora.runtime import deep, recalibrate  # noqa: E402

from . import shifts  # noqa: E402
from .shift_bench import OUT, parse_overrides  # noqa: E402


def accuracy(bundle: Path, x, y, x_te, y_te, kind: str, config: TrainConfig, epochs: int | None) -> float:
    """Test accuracy of one deep adapter trained over `kind`'s statistics (estimated on x)."""
    bb = Backbone(bundle, threads=1)
    b = bb if kind == "none" else bb.recalibrated(recalibrate.estimate(bb, {bb.manifest.inputs[0].name: x}, kind))
    chain = load_chain(bundle, b.manifest)
    s = deep.settings(config)
    eng = deep_loop.engine(chain, s["r"], s["lora_alpha"] / s["r"])
    flat = deep_loop.fit(eng, chain.prep(x), y, config, epochs=epochs or deep.budget(config, len(y)),
                         weight_decay=s["weight_decay"], task="classification")
    out = deep_loop.outputs(eng, split(flat, eng.shapes), chain.prep(x_te))
    return float((out.argmax(1) == y_te).mean())


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocol", required=True, choices=list(shifts.PROTOCOLS))
    ap.add_argument("--backbone", required=True)
    ap.add_argument("--shots", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--kinds", default="none,bn")
    ap.add_argument("--epochs", type=int, default=None, help="the deep budget (default: runtime/deep.budget)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="a TrainConfig field")
    ap.add_argument("--bundles", default=str(OUT / "bundles"))
    args = ap.parse_args(argv)
    from . import shift_models            # torch: builds the backbone if missing
    data = shifts.build(args.protocol)
    bundle = shift_models.bundle(args.protocol, args.backbone, data, Path(args.bundles)) / "bundle"
    (xp, yp), (xt, yt) = data["pool"], data["test"]
    overrides, kinds = parse_overrides(args.set), args.kinds.split(",")
    res = {k: [] for k in kinds}
    print(f"{args.protocol} {args.backbone} {args.shots}/class, overrides {overrides or 'none'}, "
          f"load {os.getloadavg()[0]:.1f}")
    for seed in range(args.seeds):
        idx = shifts.draw(yp, args.shots, seed)
        for kind in kinds:
            t = time.perf_counter()
            res[kind].append(accuracy(bundle, xp[idx], yp[idx], xt, yt, kind,
                                      TrainConfig(**{"seed": seed, **overrides}), args.epochs))
            print(f"  seed {seed} {kind:6s} {100 * res[kind][-1]:5.1f} %  {time.perf_counter() - t:5.1f} s", flush=True)
    for kind, v in res.items():
        print(f"{kind:6s} {100 * np.mean(v):5.1f} +- {100 * np.std(v):4.1f} %  per seed "
              + " ".join(f"{100 * a:.1f}" for a in v))
    return res


if __name__ == "__main__":
    main()
