"""`edgelora export`: a model -> backbone bundle. ONNX needs only onnx; a torch model needs torch (lazily)."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from ..files.bundle import BUNDLE_KIND, FEATURE_MAP_POOLINGS
from . import common

EXAMPLE = """
edgelora export model.onnx --out fan_bundle                        # any ONNX model; no torch needed
edgelora export model.pt2 --out fan_bundle --taps auto             # a torch.export program
edgelora export mypkg.models:make_mlp --weights mlp.pt --example 1,512 --out fan_bundle \\
    --classes normal,imbalance,damaged
"""


def register(subparsers) -> None:
    p = common.add_command(
        subparsers, "export", run, report,
        description="Write a backbone bundle (ONNX backbone with pooled tap outputs + manifest) from MODEL: an "
                    ".onnx file (tapped with the onnx package only, the graphs extra, so this also runs on the "
                    "device), a "
                    "torch.export program (.pt2) or package.module:factory with --weights (these two need torch: "
                    "from the edgelora clone: pip install -e '.[export]'). Taps: `auto` takes the input of every "
                    "layer with weights "
                    "(Skip2-LoRA); or name them. Torch exports are checked against onnxruntime before writing.",
        example=EXAMPLE)
    p.add_argument("model", metavar="MODEL", help="model.onnx, program.pt2 or package.module:factory")
    p.add_argument("--out", required=True, type=Path, metavar="BUNDLE",
                   help="bundle folder to write (new, empty, or a bundle, which is replaced atomically)")
    common.add_overwrite(p, "--out")
    p.set_defaults(targets=lambda a: ([("--out", a.out, BUNDLE_KIND)],
                                      [("model", a.model), ("weights file", a.weights), ("example file", a.example)]))
    p.add_argument("--taps", default="auto", metavar="auto|NAME,...",
                   help="auto, or comma-separated module names (torch) / tensor names (ONNX)")
    p.add_argument("--example", default=None, metavar="SHAPE|FILE",
                   help="torch only: example input shape with the batch dim (1,512) or a .npy/.npz file")
    p.add_argument("--weights", type=Path, default=None, metavar="STATE_DICT",
                   help="torch only: state dict file for package.module:factory")
    p.add_argument("--task", choices=("classification", "regression"), default="classification")
    p.add_argument("--classes", default=None, metavar="A,B,...", help="class names (default 0, 1, ...)")
    p.add_argument("--output", default=None, metavar="NAME",
                   help="which model output is the base output, if the model has several")
    p.add_argument("--attention-mask", default=None, metavar="INPUT",
                   help="input holding a (batch, tokens) mask, for masked mean pooling of token taps")
    p.add_argument("--pooling", choices=FEATURE_MAP_POOLINGS, default="global_avg",
                   help="how conv feature-map taps become vectors: channel means (C values), means and standard "
                        "deviations (2 C), or means of 2/4/8 segments along time or image rows (C S) "
                        "(default global_avg)")
    p.add_argument("--tap-statistics", choices=("none", "std", "map", "all"), default="none",
                   help="torch only: also offer each channel-mean tap's channel standard deviations (std), its feature "
                        "map whole when small (map), or both, for fine-tunes to choose by cross-validation "
                        "(docs/taps.md; default none)")


def run(args: argparse.Namespace) -> dict:
    taps = "auto" if args.taps == "auto" else [t.strip() for t in args.taps.split(",") if t.strip()]
    classes = None if args.classes is None else [c.strip() for c in args.classes.split(",")]
    options = {"task": args.task, "classes": classes, "attention_mask": args.attention_mask, "pooling": args.pooling}
    statistics = {"none": (), "std": ("std",), "map": ("map",), "all": ("std", "map")}[args.tap_statistics]
    if str(args.model).lower().endswith(".onnx"):
        if statistics:
            raise ValueError(f"--tap-statistics {args.tap_statistics}: only torch exports offer tap statistics; an "
                             f"ONNX model's taps are added as channel means (leave out --tap-statistics)")
        for flag in ("example", "weights"):
            if getattr(args, flag) is not None:
                raise ValueError(f"--{flag} is for torch models; an ONNX model carries its shapes and weights")
        path = Path(args.model)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        from ..graphs.onnx_taps import add_taps
        manifest = add_taps(path, args.out, taps, output=args.output, **options)
    else:
        # the form first, so that a wrong MODEL is bad input (exit 2) whether torch is installed or not
        if not (str(args.model).endswith(".pt2") or re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", str(args.model))):
            raise ValueError(f"MODEL should be model.onnx, program.pt2 or package.module:factory, found {args.model!r}")
        try:
            import torch  # noqa: F401  - only this subcommand ever imports torch
            from edgelora_export.spec import export_from_spec
        except ImportError as e:
            raise common.CommandError(f"exporting a torch model needs torch and edgelora's export package ({e}); "
                                      f"install them from the edgelora clone with: pip install -e '.[export]' "
                                      f"(an .onnx MODEL needs neither, only onnx: "
                                      f"pip install -e '.[graphs]')") from None
        output = int(args.output) if args.output is not None and args.output.isdigit() else args.output
        manifest = export_from_spec(args.model, args.out, taps, example=args.example, weights=args.weights,
                                    output=output, statistics=statistics, **options)
    return {"bundle": str(args.out), "fingerprint": manifest.fingerprint, "task": manifest.task,
            "inputs": [{"name": i.name, "shape": list(i.shape), "dtype": i.dtype} for i in manifest.inputs],
            "output": {"name": manifest.output.name, "width": manifest.output.width},
            "taps": [{"name": t.name, "width": t.width, "pooling": t.pooling} for t in manifest.taps]}


def report(r: dict) -> str:
    taps = ", ".join(f"{t['name']} ({t['width']}{', ' + t['pooling'] if t['pooling'] != 'none' else ''})"
                     for t in r["taps"])
    return (f"wrote bundle {r['bundle']} ({r['fingerprint'][:23]}...)\n"
            f"  {r['task']}, output `{r['output']['name']}` of width {r['output']['width']}\n"
            f"  {len(r['taps'])} taps: {taps}")
