"""Per har user: what the default fine-tune's cross-validation sees, against the later test recordings.

    python -m device_bench.har_users [--arch mlp|cnn1d] [--seed 0]

For each user: test accuracy without and with fine-tuning, and the cross-validated accuracy (mean ± spread
over folds, each fold) of the chosen recipe and of no fine-tuning, on the user's first recordings. A user the
fine-tune harms on test while cross-validation shows a clear gain is one no estimate from the fine-tune
samples alone can flag.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from edgelora import Backbone, Predictor, finetune
from edgelora.runtime.train_config import TrainConfig

from .tasks import load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m device_bench.har_users", description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="mlp", choices=("mlp", "cnn1d"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bundles", type=Path, default=Path("bench_out/har_users/bundles"))
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(f"{'user':<12} {'test: no FT':>11} {'FT':>6}   {'CV: FT':>13} {'no FT':>6}   folds (%)        chosen")
    for name, (x_ft, y_ft), (x_te, y_te), bundle in load("har", args.arch, args.bundles):
        bb = Backbone(bundle)
        adapter, history = finetune(bb, x_ft, y_ft, TrainConfig(seed=args.seed))
        before, after = (100 * np.mean(Predictor(bb, a).predict(x_te) == y_te) for a in (None, adapter))
        cv, ch = history.selection, history.chosen
        c, b = cv["chosen"], cv["no_finetune"]
        print(f"{name:<12} {before:10.1f}% {after:5.1f}%   {100 * c['score']:6.1f} ± {100 * c['score_spread']:3.1f}% "
              f"{100 * b['score']:5.1f}%   {[round(100 * s) for s in c['score_folds']]!s:<16} "
              f"{ch['form']}, taps {ch['tap_scaling']}, {ch['epochs']} epochs"
              + ("   <- worse than no fine-tuning" if after < before else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
