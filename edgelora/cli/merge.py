"""`edgelora merge`: deploy an adapter as plain ONNX that any onnxruntime (C, C++, Java, Swift) can run."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..graphs.merge import MERGED_KIND, ORT_ADAPTER_KIND
from . import common

EXAMPLE = """
edgelora merge fan_bundle adapters/site7 --out site7.onnx            # backbone + adapter in one model
edgelora merge fan_bundle --format lora_model --out switchable.onnx   # adapter weights as inputs
edgelora merge fan_bundle adapters/site7 --format onnx_adapter --out site7.onnx_adapter
"""
FORMATS = ("merged", "lora_model", "onnx_adapter")


def register(subparsers) -> None:
    p = common.add_command(
        subparsers, "merge", run, report,
        description="merged (default): one ONNX model computing backbone + ADAPTER, with the bundle's input "
                    "standardisation baked in; its single output has the backbone's output name. lora_model: "
                    "backbone + skip adapters whose weights are graph inputs (ADAPTER not needed). "
                    "onnx_adapter: ADAPTER in onnxruntime's LoRA adapter format, activated per run on a "
                    "lora_model with RunOptions.add_active_adapter (onnxruntime >= 1.20).",
        example=EXAMPLE)
    p.add_argument("bundle", type=Path, metavar="BUNDLE", help="backbone bundle folder")
    p.add_argument("adapter", type=Path, nargs="?", default=None, metavar="ADAPTER", help=common.ADAPTER_HELP)
    p.add_argument("--out", required=True, type=Path, metavar="FILE",
                   help="model.onnx or name.onnx_adapter (new, or one this command wrote, which is replaced)")
    common.add_overwrite(p, "--out")
    p.set_defaults(targets=targets)
    p.add_argument("--format", choices=FORMATS, default="merged", help="what to write (default merged)")
    p.add_argument("--no-preprocess", action="store_true",
                   help="leave input standardisation out of the graph (the app feeds standardised inputs)")


def targets(args: argparse.Namespace) -> tuple[list, list]:
    kind = ORT_ADAPTER_KIND if args.format == "onnx_adapter" else MERGED_KIND
    adapter = None if args.adapter is None else common.adapter_path(args.adapter)
    return [("--out", args.out, kind)], [("input bundle", args.bundle), ("adapter", adapter)]


def run(args: argparse.Namespace) -> dict:
    from ..graphs import merge as m
    if args.format != "lora_model" and args.adapter is None:
        raise ValueError(f"--format {args.format} needs an ADAPTER folder after BUNDLE")
    adapter = None if args.adapter is None else common.adapter_path(args.adapter)
    if not args.out.parent.is_dir():
        raise FileNotFoundError(f"--out: folder {args.out.parent} does not exist")
    bake = not args.no_preprocess
    if args.format == "merged":
        out = m.merge(args.bundle, adapter, args.out, bake_preprocess=bake)
    elif args.format == "lora_model":
        out = m.lora_model(args.bundle, args.out, bake_preprocess=bake)
    else:
        out = m.export_ort_adapter(args.bundle, adapter, args.out)
    return {"out": str(out), "format": args.format, "bundle": str(args.bundle),
            "adapter": None if args.adapter is None else str(args.adapter), "bytes": Path(out).stat().st_size,
            "preprocess_baked": bake and args.format != "onnx_adapter"}


def report(r: dict) -> str:
    what = {"merged": "backbone + adapter", "lora_model": "backbone + switchable adapter inputs",
            "onnx_adapter": "onnxruntime LoRA adapter"}[r["format"]]
    return f"wrote {r['out']} ({what}, {common.human_bytes(r['bytes'])})"
