"""`edgelora eval`: accuracy, macro-F1 and loss (or MSE/MAE) of the backbone, with or without an adapter."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..runtime.predict import Predictor
from . import common

EXAMPLE = """
edgelora eval fan_bundle --data test.npz                          # the base model
edgelora eval fan_bundle --adapter adapters/site7 --data test.npz --json
"""


def register(subparsers) -> None:
    p = common.add_command(
        subparsers, "eval", run, report,
        description="Evaluate the backbone of BUNDLE, plus an adapter if given, on labelled samples: accuracy, "
                    "macro-F1 and cross-entropy loss for classification, MSE, MAE and loss for regression. "
                    "JSON keys: accuracy, macro_f1, loss (or mse, mae, loss), samples.",
        example=EXAMPLE)
    p.add_argument("bundle", type=Path, metavar="BUNDLE", help="backbone bundle folder")
    p.add_argument("--adapter", type=Path, default=None, metavar="DIR",
                   help=common.ADAPTER_HELP + " (default: none)")
    common.add_data_flags(p, labels=True, what="labelled test samples")


def run(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    backbone = common.open_backbone(args)
    adapter = common.open_adapter(args, backbone.manifest)
    inputs, targets = common.load_data(args, backbone.manifest, labels=True)
    metrics = Predictor(backbone, adapter).evaluate(inputs, targets)
    return {**metrics, "task": backbone.manifest.task, "bundle": str(args.bundle),
            "adapter": None if args.adapter is None else str(args.adapter), "data": str(args.data),
            "seconds": time.perf_counter() - start}


def report(r: dict) -> str:
    model = f"{r['bundle']} + adapter {r['adapter']}" if r["adapter"] else f"{r['bundle']} (no adapter)"
    return "\n".join([f"{r['samples']} samples of {r['data']} on {model}"] + common.metric_lines(r))
