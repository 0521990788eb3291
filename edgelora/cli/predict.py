"""`edgelora predict`: labels (or probabilities, or regression values) for samples, saved as .npy."""
from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np

from ..files.fileio import atomic_write
from ..files.outputs import file_kind
from ..runtime.predict import Predictor
from . import common

EXAMPLE = """
edgelora predict fan_bundle --adapter adapters/site7 --data today.npz --out labels.npy
edgelora predict fan_bundle --adapter adapters/site7 --data today.npy --out proba.npy --proba
"""


def register(subparsers) -> None:
    p = common.add_command(
        subparsers, "predict", run, report,
        description="Run the backbone of BUNDLE (plus an adapter if given) on samples and write the predictions "
                    "to a .npy file, atomically: class indices (int64, shape (N,)) by default, class "
                    "probabilities (float32, (N, C)) with --proba, values (float32, (N, C)) for regression. "
                    "Labels in the data file, if any, are ignored.",
        example=EXAMPLE)
    p.add_argument("bundle", type=Path, metavar="BUNDLE", help="backbone bundle folder")
    p.add_argument("--adapter", type=Path, default=None, metavar="DIR",
                   help=common.ADAPTER_HELP + " (default: none)")
    p.add_argument("--out", required=True, type=Path, metavar="PRED.npy",
                   help="where to write the predictions (new, or an earlier prediction file, which is replaced)")
    common.add_overwrite(p, "--out")
    p.set_defaults(targets=lambda a: ([("--out", a.out, PREDICTIONS_KIND)],
                                      [("input bundle", a.bundle), ("data file", a.data),
                                       ("adapter", None if a.adapter is None else common.adapter_path(a.adapter))]))
    p.add_argument("--proba", action="store_true", help="write class probabilities instead of labels")
    common.add_data_flags(p, labels=False, what="samples to predict")


def _is_prediction(head: bytes) -> bool:
    """A .npy this command could have written: int64 labels (N,) or float32 values (N, C)."""
    f, fmt = io.BytesIO(head), np.lib.format
    try:
        major, _ = fmt.read_magic(f)
        shape, _, dtype = (fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0)(f)
    except (ValueError, EOFError, SyntaxError):
        return False
    return (dtype == np.int64 and len(shape) == 1) or (dtype == np.float32 and len(shape) == 2)


PREDICTIONS_KIND = file_kind("prediction file (.npy)", _is_prediction)


def run(args: argparse.Namespace) -> dict:
    if args.out.suffix.lower() != ".npy":
        raise ValueError(f"--out should name a .npy file, found {str(args.out)!r}")
    if not args.out.parent.is_dir():
        raise FileNotFoundError(f"--out: folder {args.out.parent} does not exist")
    start = time.perf_counter()
    backbone = common.open_backbone(args)
    adapter = common.open_adapter(args, backbone.manifest)
    inputs, _ = common.load_data(args, backbone.manifest, labels=False)
    predictor = Predictor(backbone, adapter)
    pred = predictor.predict_proba(inputs) if args.proba else predictor.predict(inputs)
    buf = io.BytesIO()
    np.save(buf, pred, allow_pickle=False)
    atomic_write(args.out, buf.getvalue())
    m = backbone.manifest
    result = {"out": str(args.out), "kind": "probabilities" if args.proba else
              ("labels" if m.task == "classification" else "values"), "shape": list(pred.shape),
              "dtype": str(pred.dtype), "samples": int(len(pred)), "bundle": str(args.bundle),
              "adapter": None if args.adapter is None else str(args.adapter), "seconds": time.perf_counter() - start}
    if m.task == "classification" and not args.proba:
        counts = np.bincount(pred, minlength=m.num_outputs)
        result["counts"] = {name: int(k) for name, k in zip(m.classes, counts)}
    return result


def report(r: dict) -> str:
    text = f"wrote {r['kind']} {tuple(r['shape'])} {r['dtype']} for {r['samples']} samples to {r['out']}"
    if "counts" in r:
        text += "\n  per class: " + ", ".join(f"{name} {k}" for name, k in r["counts"].items())
    return text
