"""`edgelora kit`: write the training kit (plain ONNX graphs + a JSON contract) for any onnxruntime client."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..core.budget import DEFAULT_EPOCHS
from ..files.adapter import load_adapter
from ..files.bundle import Manifest, load_manifest
from ..files.tap_stats import view
from ..graphs.kit import CONTRACT_FILE, EVAL_FILE, KIT_KIND, TRAIN_FILE, KitRecipe, build_kit
from ..graphs.kit_recipe import kit_recipe_of
from ..runtime.train_config import TrainConfig
from . import common, flags

EXAMPLE = """
edgelora kit fan_bundle --out fan_kit
edgelora kit fan_bundle --out fan_kit --rank 8 --batch-size 32 --weight-decay 0.1 --epochs 40
node clients/js/src/cli.js train --bundle fan_bundle --kit fan_kit --data new_site.npz --out adapters/site7
edgelora finetune fan_bundle --data site7.npz --out site7_numpy && edgelora kit fan_bundle --out fan_kit --recipe-of site7_numpy
"""


def register(subparsers) -> None:
    d, k = TrainConfig(), KitRecipe()
    p = common.add_command(
        subparsers, "kit", run, report,
        description=f"Write KIT, a folder with {TRAIN_FILE} (one epoch of Skip2-LoRA training as a single ONNX "
                    f"Loop), {EVAL_FILE} (adapter outputs and loss on cached rows) and {CONTRACT_FILE} (inputs, "
                    "outputs, layout, recipe, the backbone it belongs to). Opset 17, IR 8: any onnxruntime (Kotlin, "
                    "Swift, JavaScript/wasm, C/C++) can fine-tune with it, no Python needed; clients/js is the "
                    "reference client. Rank, alpha, batch size and optimiser are baked into the graphs; epochs, "
                    "learning rate, weight decay, class weights and seed are recorded as defaults the client "
                    "may change.", example=EXAMPLE)
    p.set_defaults(targets=lambda args: ([("--out", args.out, KIT_KIND)], [("input bundle", args.bundle)] +
                                         ([("--recipe-of adapter", args.recipe_of)] if args.recipe_of else [])))
    p.add_argument("bundle", type=Path, metavar="BUNDLE", help="backbone bundle folder")
    p.add_argument("--out", required=True, type=Path, metavar="KIT",
                   help="kit folder to write (new, empty, or a kit, which is replaced atomically)")
    common.add_overwrite(p, "--out")
    g = p.add_argument_group("recipe baked into the graphs")
    g.add_argument("--rank", type=flags.positive_int, default=k.r, help=f"adapter rank r (default {k.r})")
    g.add_argument("--alpha", type=flags.positive_float, default=None, help="LoRA alpha (default 2 r)")
    g.add_argument("--batch-size", type=flags.positive_int, default=k.batch_size, help=f"default {k.batch_size}")
    g.add_argument("--optimizer", choices=("sgd", "adam", "adamw"), default=k.optimizer, help=f"default {k.optimizer}")
    g.add_argument("--clip-norm", type=flags.positive_float, default=None, help="clip the gradient norm (default off)")
    g.add_argument("--no-bias", action="store_true", help="do not learn an output bias")
    r = p.add_argument_group("run defaults recorded in the contract")
    r.add_argument("--epochs", type=flags.positive_int, default=DEFAULT_EPOCHS, help=f"default {DEFAULT_EPOCHS}")
    r.add_argument("--lr", type=flags.positive_float, default=d.lr, help=f"default {d.lr}")
    r.add_argument("--weight-decay", type=flags.decay, default=0.1, metavar="W",
                   help="weight decay (default 0.1; the kit takes it as an input, so one kit serves several)")
    r.add_argument("--seed", type=int, default=d.seed, help=f"default {d.seed}")
    p.add_argument("--recipe-of", type=Path, default=None, metavar="ADAPTER",
                   help="take the recipe and run defaults an edgelora adapter chose (by cross-validation) instead of "
                        "the flags above: the kit then trains that recipe on any onnxruntime")


def _recipe_of(args: argparse.Namespace, manifest) -> tuple[KitRecipe, dict, Manifest]:
    """(recipe, defaults, the manifest it reads: the view of the tap statistics it reads) of the adapter named by
    --recipe-of, refusing recipe flags given alongside it."""
    d, k = TrainConfig(), KitRecipe()
    given = [f"--{n.replace('_', '-')}" for n, default in (("rank", k.r), ("alpha", None), ("batch_size", k.batch_size),
             ("optimizer", k.optimizer), ("clip_norm", None), ("no_bias", False), ("epochs", DEFAULT_EPOCHS), ("lr", d.lr),
             ("weight_decay", 0.1), ("seed", d.seed)) if getattr(args, n) != default]
    if given:
        raise ValueError(f"--recipe-of takes the whole recipe from the adapter; expected no recipe flags, found {given}")
    config = load_adapter(args.recipe_of, manifest).config
    return (*kit_recipe_of(config, str(args.recipe_of)), view(manifest, config.tap_statistics, str(args.recipe_of)))


def run(args: argparse.Namespace) -> dict:
    if args.recipe_of is not None:
        recipe, defaults, manifest = _recipe_of(args, load_manifest(args.bundle))
        defaults = {"schedule": "constant", "warmup_epochs": 0.0, "class_weights": "none", "val_fraction": 0.0,
                    "seed": TrainConfig().seed, "lr": TrainConfig().lr, **defaults}
        return _write(args, manifest, recipe, defaults)
    if args.weight_decay == "auto":
        raise ValueError("--weight-decay: the kit records one default, expected a number >= 0, found 'auto'; "
                         "a client may train several decays with one kit and compare them on `evaluate`")
    manifest = load_manifest(args.bundle)
    recipe = KitRecipe(r=args.rank, lora_alpha=args.alpha, bias=not args.no_bias, batch_size=args.batch_size,
                       optimizer=args.optimizer, clip_norm=args.clip_norm)
    defaults = {"epochs": args.epochs, "lr": args.lr, "weight_decay": args.weight_decay, "seed": args.seed,
                "schedule": "constant", "warmup_epochs": 0.0, "class_weights": "none", "val_fraction": 0.0}
    return _write(args, manifest, recipe, defaults)


def _write(args: argparse.Namespace, manifest, recipe: KitRecipe, defaults: dict) -> dict:
    kit = build_kit(manifest, recipe, defaults)
    out = kit.save(args.out)
    return {"out": str(out), "bundle": str(args.bundle), "identity": manifest.identity,
            "recipe": kit.contract["recipe"], "defaults": defaults, "parameters": kit.contract["layout"]["size"],
            "bytes": sum(f.stat().st_size for f in Path(out).iterdir())}


def report(r: dict) -> str:
    rec = r["recipe"]
    return (f"wrote {r['out']} (training kit, {common.human_bytes(r['bytes'])}): r={rec['r']} alpha={rec['lora_alpha']:g} "
            f"batch {rec['batch_size']} {rec['optimizer']}, {r['parameters']} parameters; defaults: "
            f"{r['defaults']['epochs']} epochs, weight decay {r['defaults']['weight_decay']:g}\n"
            f"  for backbone {r['identity'][:23]}... of {r['bundle']}")
