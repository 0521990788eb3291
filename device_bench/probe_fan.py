"""Why Skip2-LoRA and FT-All differ on fan: `python -m device_bench.probe_fan [BUNDLE]`.

Prints test accuracy (mean over SEEDS) of
  1. FT-All (numpy engine, the bench recipe otherwise) trained on: the whole fine-tune set (no validation),
     only the 80 % 'tail' training split (no validation), and the bench recipe (split + best epoch);
  2. Skip2-LoRA (edgelora.finetune) with its defaults and a few settings changed;
  3. a logistic regression on the input tap and on all taps (the best linear read-out of frozen taps;
     needs scikit-learn).
Not a benchmark (times are not reported); one thread, deterministic.
"""
from __future__ import annotations

import os

for _k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_k, "1")

import sys  # noqa: E402
from dataclasses import replace  # noqa: E402

import numpy as np  # noqa: E402

BUNDLE = "artifacts/bundles/fan_mlp"
SEEDS = (0, 1, 2)
SKIP2_VARIANTS = ({}, {"weight_decay": 0.1}, {"weight_decay": "auto"}, {"lr": 1e-2}, {"r": 16, "lora_alpha": 32.0})


def main(bundle: str = BUNDLE) -> None:
    from edgelora import Backbone, Predictor, TrainConfig, finetune
    from edgelora.runtime.train_config import validation_split

    from edgelora.graphs.onnx_chain import load_chain
    from .config import BenchConfig
    from .numpy_methods import accuracy, finetune_numpy
    from .protocols import fan

    d = fan()
    (xf, yf), (xt, yt) = d["finetune"], d["test"]
    chain, bb = load_chain(bundle), Backbone(bundle)
    print(f"bundle {bundle} ({bb.fingerprint[:19]}), before fine-tuning "
          f"{100 * Predictor(bb).evaluate(xt, yt)['accuracy']:.1f} %")
    tr, _ = validation_split(yf, 0.2, "tail", 0, "classification")
    for name, (x, y, vf) in {"all 1302, no validation": (xf, yf, 0.0),
                             f"{len(tr)}-sample tail-split training part only, no validation": (xf[tr], yf[tr], 0.0),
                             "bench recipe (split + best epoch)": (xf, yf, 0.2)}.items():
        accs = [accuracy(*finetune_numpy("np-ft-all", chain, x, y, replace(BenchConfig(), val_fraction=vf), s)[:2],
                         xt, yt) for s in SEEDS]
        print(f"FT-All (numpy), {name}: {100 * np.mean(accs):.1f} ± {100 * np.std(accs):.1f} %")
    for kw in SKIP2_VARIANTS:
        accs = [Predictor(bb, finetune(bb, xf, yf, TrainConfig(seed=s, **kw))[0]).evaluate(xt, yt)["accuracy"]
                for s in SEEDS]
        print(f"Skip2-LoRA {kw or 'defaults'}: {100 * np.mean(accs):.1f} ± {100 * np.std(accs):.1f} %")
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        print("scikit-learn not installed: no logistic-regression read-out")
        return
    _, taps = bb.run(xf)
    _, taps_t = bb.run(xt)
    for name, (a, b) in {"input tap": (taps[0], taps_t[0]),
                         "all taps": (np.concatenate(taps, 1), np.concatenate(taps_t, 1))}.items():
        scores = [LogisticRegression(C=c, max_iter=3000).fit(a, yf).score(b, yt) for c in (0.01, 0.1, 1.0)]
        print(f"logistic regression on the {name} (C = 0.01, 0.1, 1): {', '.join(f'{100 * s:.1f}' for s in scores)} %")


if __name__ == "__main__":
    main(*sys.argv[1:])
