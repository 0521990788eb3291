"""CLI: python -m device_bench run --protocol fan|har|fsdd|mnist [--seeds 3] [--out DIR] ..."""
from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from .config import METHODS, BenchConfig
from .tasks import PROTOCOLS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m device_bench")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="benchmark every method on one protocol (each method in its own process)")
    p.add_argument("--protocol", required=True, choices=PROTOCOLS)
    p.add_argument("--seeds", type=int, default=3, help="seeds per method (default 3)")
    p.add_argument("--out", default=None, help="results folder (default bench_out/PROTOCOL)")
    p.add_argument("--methods", default="", help=f"comma-separated subset of {','.join(METHODS)} "
                   f"(default: all; ort-* only with --ort-python)")
    p.add_argument("--ort-python", default=None, help="python of a venv with onnxruntime-training==1.19.2 and "
                   "onnx==1.17.0: adds the optional onnxruntime-training peer (ort-ft-all, ort-ft-last)")
    p.add_argument("--arch", default=None, help="backbone family (default: mlp for fan/har, cnn2d for fsdd/mnist; "
                   "har also cnn1d): picks device_bench.reference's bundle PROTOCOL_ARCH")
    p.add_argument("--bundle", default=None, help="use this bundle instead of the reference backbone")
    p.add_argument("--subset", type=int, default=None, help="keep about this many fine-tune/test samples per task")
    p.add_argument("--scaling", choices=("auto", "on", "off"), default="auto",
                   help="cost vs N and rank runs (auto: on for fan)")
    p.add_argument("--max-address-space-mb", type=int, default=None, help="RLIMIT_AS of every worker")
    p.add_argument("--repeat", type=int, default=1,
                   help="fine-tunes per seed in each process; the median time is kept (default 1: one cold run)")
    p.add_argument("--no-profile", action="store_true", help="skip the instrumented Skip-LoRA replays")
    p.add_argument("--no-plots", action="store_true")
    for f in fields(BenchConfig):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                       help=f"recipe: {f.name} (default {f.default})")
    args = parser.parse_args(argv)
    from .run import run
    cfg = BenchConfig(**{f.name: getattr(args, f.name) for f in fields(BenchConfig)})
    try:
        run(args.protocol, seeds=args.seeds, out=args.out, methods=[m for m in args.methods.split(",") if m],
            cfg=cfg, arch=args.arch, bundle=args.bundle, subset=args.subset,
            with_scaling={"auto": None, "on": True, "off": False}[args.scaling],
            max_address_space_mb=args.max_address_space_mb, profile=not args.no_profile, plot=not args.no_plots,
            repeat=args.repeat, ort_python=args.ort_python)
    except (ValueError, FileNotFoundError, NotImplementedError) as e:
        print(f"device_bench: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
