"""`edgelora demo`: a digit classifier meets a new scanner, and the device fixes it with Skip2-LoRA.

Everything is local: the pre-trained backbone ships in edgelora/data/demo_bundle (edgelora/cli/make_demo.py),
the digits come from the installed scikit-learn (demo_data), no torch, no network.
"""
from __future__ import annotations

import argparse
import io
import resource
import sys
import time
from pathlib import Path

import numpy as np

from ..core.metrics import evaluate_outputs
from ..files.bundle import BUNDLE_KIND
from ..files.fileio import atomic_write, write_folder
from ..files.outputs import Kind, check_target, file_kind
from ..runtime.backbone import Backbone
from ..runtime.features import prepare
from ..runtime.predict import Predictor
from ..runtime.train import finetune_features
from ..runtime.train_config import TrainConfig
from . import common, demo_data, flags
from .progress import Progress

BUNDLE = Path(__file__).resolve().parent.parent / "data" / "demo_bundle"
EXAMPLE = """
edgelora demo                          # report + edgelora_demo.png in the current folder
edgelora demo --png /tmp/story.png --seed 1
edgelora demo --json --no-plot
edgelora demo --save-data demo_files   # also keep the bundle and the new scanner's data to try the CLI on
"""


def register(subparsers) -> None:
    p = common.add_command(
        subparsers, "demo", run, report,
        description="A handwritten-digit classifier (an MLP pre-trained in the lab, shipped with edgelora) is "
                    "deployed behind a new scanner that shifts, fades and greys its images, and its accuracy "
                    "collapses. The device fine-tunes Skip2-LoRA adapters on 400 labelled scans (on one core, "
                    "in well under a second) and the accuracy comes back. Prints accuracy before/after, time "
                    "(cache fill vs training), peak memory and cache hits, and draws the story as a PNG. Needs "
                    "scikit-learn (the digits) and matplotlib (the PNG): from the edgelora clone, "
                    "pip install -e '.[demo]' (or ./run demo).",
        example=EXAMPLE)
    p.add_argument("--png", type=Path, default=Path("edgelora_demo.png"), metavar="FILE",
                   help="where to write the figure (default edgelora_demo.png)")
    p.add_argument("--no-plot", action="store_true", help="skip the figure")
    p.add_argument("--epochs", type=flags.positive_int, default=60,
                   help="most epochs to train; cross-validation picks 1/4, 1/2 or all of them (default 60)")
    p.add_argument("--rank", dest="r", type=flags.rank, default=8, metavar="N|auto", help="adapter rank (default 8)")
    p.add_argument("--weight-decay", type=flags.decay, default=TrainConfig().weight_decay, metavar="W|auto",
                   help=f"weight decay, or auto: chosen on the device by cross-validation "
                        f"(default {TrainConfig().weight_decay})")
    p.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    p.add_argument("--save-data", type=Path, default=None, metavar="DIR",
                   help="also write DIR/bundle (the demo backbone), DIR/finetune.npz and DIR/test.npz (the new "
                        "scanner's labelled scans, arrays x and y) to try the other commands on; DIR must be "
                        "new, empty or written by an earlier --save-data")
    p.set_defaults(targets=lambda a: ([("--save-data", a.save_data, DEMO_DATA_KIND),
                                       ("--png", None if a.no_plot else a.png, PNG_KIND)],
                                      [("shipped demo bundle", BUNDLE)]))


def run(args: argparse.Namespace) -> dict:
    if not args.no_plot and not args.png.parent.is_dir():
        raise FileNotFoundError(f"--png: folder {args.png.parent} does not exist")
    start = time.perf_counter()
    try:
        data = demo_data.splits()
    except demo_data.MissingDependency as e:
        raise common.CommandError(str(e)) from None
    backbone = Backbone(BUNDLE, threads=args.threads)
    base = Predictor(backbone)
    lab = base.evaluate(*data["lab_test"])
    before = base.evaluate(*data["test"])

    # edgelora's default policy: cross-validation on the cache picks the tap scaling and the epoch count,
    # then the adapter is trained on all 400 scans
    config = TrainConfig(r=args.r, epochs=args.epochs, weight_decay=args.weight_decay, seed=args.seed)
    # On the device: the labelled scans are checked and go through the backbone once, into the Skip-Cache,
    # while the device checks how the deployed model does on them; fine-tuning then reuses those rows.
    features, targets, split = prepare(backbone, *data["finetune"], config)
    cache = features.cache
    collected = evaluate_outputs(features(np.arange(len(features)))[0], targets, "classification")
    bar = Progress(config.epochs, "training", enabled=not args.quiet)
    adapter, history = finetune_features(features, targets, split, config, callback=lambda rec: bar.update(
        bar.done + 1, f"train loss {rec['train_loss']:.3f}"))
    bar.close()
    backbone_passes = cache.misses   # fine-tuning runs on the cache: the backbone saw each scan once
    after = Predictor(backbone, adapter).evaluate(*data["test"])
    peak = _peak_rss()

    saved = None if args.save_data is None else _save_data(args.save_data, data)
    result = {
        "saved_data": saved, **_figures(lab, before, after, history, targets, cache, config),
        "collected_accuracy_before": collected["accuracy"],
        "seconds": {"cache_fill": cache.fill_seconds, "train": history.train_seconds,
                    "total": time.perf_counter() - start},
        "backbone_passes": backbone_passes, "peak_rss_bytes": peak, "threads": args.threads,
        "shift": demo_data.SHIFT, "data": demo_data.CITATION, "bundle": str(BUNDLE),
        "png": None, "png_note": "not written (--no-plot)" if args.no_plot else None}
    if not args.no_plot:
        result["png"], result["png_note"] = _plot(result, data, args.png)
    return result


def _figures(lab: dict, before: dict, after: dict, history, targets: np.ndarray, cache, config: TrainConfig) -> dict:
    """What the fine-tune did, for the report and the figure: accuracies, samples, the recipe cross-validation
    chose and its curve, the Skip-Cache's work."""
    sel, ch = history.selection, history.chosen
    return {
        "accuracy": {"lab": lab["accuracy"], "before": before["accuracy"], "after": after["accuracy"]},
        "macro_f1": {"lab": lab["macro_f1"], "before": before["macro_f1"], "after": after["macro_f1"]},
        "gain_points": 100 * (after["accuracy"] - before["accuracy"]),
        "samples": {"finetune": int(len(targets)), **history.samples, "test": before["samples"]},
        "chosen": ch, "cross_validation": sel, "epochs": config.epochs, "recipes": len(sel["candidates"]),
        "cache": {"hits": cache.hits, "misses": cache.misses, "rows": len(cache),
                  "bytes": cache.stats()["bytes"], "dtype": cache.stats()["dtype"]},
        "passes_without_cache": (len({(c["form"], c["tap_scaling"]) for c in sel["candidates"]}) * sel["folds"] + 1)
        * config.epochs * history.samples["train"],    # every fold model of each tap scaling, and the refit
        # cross-validated accuracy of the chosen recipe after each epoch count tried; epoch 0 = no adapter
        "curve": [{"epoch": 0, "cv_accuracy": sel["no_finetune"]["score"]}] +
                 [{"epoch": c["epochs"], "cv_accuracy": c["score"]} for c in sel["candidates"]
                  if (c["tap_scaling"], c["weight_decay"], c["r"]) == (ch["tap_scaling"], ch["weight_decay"], ch["r"])]}


def _plot(result: dict, data: dict, png: Path) -> tuple[str | None, str | None]:
    """(the figure written, None), or (None, why not: matplotlib is not installed)."""
    try:
        from .demo_plot import plot
    except ImportError:
        return None, "not written: matplotlib is not installed; from the edgelora clone: pip install -e '.[demo]'"
    return str(plot(result, (data["lab_test"][0][:6], data["test"][0][:6]), png)), None


PNG_KIND = file_kind("PNG figure", lambda head: head.startswith(b"\x89PNG\r\n\x1a\n"))
NPZ_KIND = file_kind("demo data file (.npz)", lambda head: head.startswith(b"PK"))
DEMO_DATA_KIND = Kind("demo data folder (bundle/, finetune.npz, test.npz)", True, container=True,
                      accepts=lambda p: (p / "bundle").is_dir() and BUNDLE_KIND.accepts(p / "bundle") and
                      all((p / n).is_file() and NPZ_KIND.accepts(p / n) for n in ("finetune.npz", "test.npz")))


def _save_data(folder: Path, data: dict) -> dict:
    """Copy the bundle and write the new scanner's scans as .npz, for the CLI quick start: each file
    replaced atomically, and only what an earlier --save-data wrote."""
    for name, kind in (("bundle", BUNDLE_KIND), ("finetune.npz", NPZ_KIND), ("test.npz", NPZ_KIND)):
        check_target(folder / name, kind)
    folder.mkdir(parents=True, exist_ok=True)
    write_folder(folder / "bundle", {p.name: p.read_bytes() for p in BUNDLE.iterdir() if p.is_file()}, "demo bundle")
    files = {"bundle": str(folder / "bundle")}
    for name in ("finetune", "test"):
        buf = io.BytesIO()
        np.savez(buf, x=data[name][0], y=data[name][1])
        atomic_write(folder / f"{name}.npz", buf.getvalue())
        files[name] = str(folder / f"{name}.npz")
    return files


def _peak_rss() -> int:
    """Peak resident set size of this process in bytes (ru_maxrss: kB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def report(r: dict) -> str:
    a, s, t, c, ch = r["accuracy"], r["samples"], r["seconds"], r["cache"], r["chosen"]
    cv = r["cross_validation"]
    figure = r["png"] or r["png_note"]
    return "\n".join([
        "edgelora demo: a digit classifier meets a new scanner",
        "  backbone   MLP 64 -> 64 -> 32 -> 10, pre-trained in the lab on 1000 clean scans (shipped in edgelora)",
        f"  shift      {r['shift']}",
        f"  device     fine-tunes Skip2-LoRA adapters on {s['finetune']} labelled scans from the new scanner "
        f"(chosen by {cv['folds']}-fold cross-validation, then trained on all {s['train']}), "
        f"{r['threads']} thread{'s' if r['threads'] > 1 else ''}",
        "",
        f"  accuracy on {s['test']} test digits",
        f"    lab scanner (clean)      {100 * a['lab']:5.1f} %",
        f"    new scanner, before      {100 * a['before']:5.1f} %",
        f"    new scanner, after       {100 * a['after']:5.1f} %   ({r['gain_points']:+.1f} points)",
        "",
        f"  expected   {100 * cv['chosen']['score']:.1f} % by cross-validation on the 400 scans "
        f"(± {100 * cv['chosen']['score_spread']:.1f} over folds; {100 * cv['no_finetune']['score']:.1f} % without "
        f"fine-tuning)",
        f"  chosen     {'skip adapters on every tap' if ch['form'] == 'skip' else 'last layer (dense)'}, "
        f"r={ch['r']}, weight decay {ch['weight_decay']:g}, taps "
        f"{'standardised' if ch['tap_scaling'] == 'standard' else 'raw'}, {ch['epochs']} epochs "
        f"(best of {r['recipes']} recipes)",
        f"  time       cache fill {t['cache_fill']:.3f} s (backbone, once per scan), training {t['train']:.3f} s "
        f"({cv['folds']} folds x {r['recipes']} recipes, then the refit); whole demo {t['total']:.1f} s",
        f"  cache      {c['misses']} misses (backbone runs), {c['hits']} hits; {c['rows']} rows, "
        f"{common.human_bytes(c['bytes'])} {c['dtype']}; backbone passes {r['backbone_passes']} "
        f"(without the cache: {r['passes_without_cache']:,})",
        f"  memory     peak RSS {r['peak_rss_bytes'] / 2**20:.0f} MB (the whole process: Python, numpy, onnxruntime)",
        f"  figure     {figure}"] +
        ([f"  data       {r['saved_data']['bundle']}, {r['saved_data']['finetune']}, {r['saved_data']['test']}"]
         if r["saved_data"] else []))
