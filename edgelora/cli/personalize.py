"""`edgelora personalize`: add a session of labelled samples to a named adapter; publish it if it is no worse."""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from ..ops.personalize import SESSION_TRAINING, PersonalizeConfig, personalize
from ..ops.store import STORE_KIND, AdapterStore
from . import common, flags

EXAMPLE = """
edgelora personalize /var/lib/edgelora/store user-42 --bundle har_bundle --data today.npz
edgelora personalize store site-7 --bundle fan_bundle --data batch.npz --margin 0.05 --json
"""


def register(subparsers) -> None:
    d, t = PersonalizeConfig(), SESSION_TRAINING
    p = common.add_command(
        subparsers, "personalize", run, report,
        description="Add new labelled samples to adapter NAME in STORE (both created if new). Only samples never "
                    "seen before run through the backbone; a new version is trained on all of the adapter's "
                    "samples, warm-started from the current version, and published only if, on the adapter's "
                    "holdout (the most recent share of each class of each earlier session), it is not worse "
                    "than the current version by more than --margin, and the current version does not find "
                    "most new labels implausible. Otherwise it is kept back and the reason printed; the current "
                    "version keeps serving, also if the command is interrupted. With too few samples yet, the "
                    "samples are kept and training is deferred. JSON key `decision`: published, rejected, "
                    "deferred or unchanged.",
        example=EXAMPLE)
    p.add_argument("store", type=Path, metavar="STORE", help="adapter store folder (created if missing)")
    p.add_argument("name", metavar="NAME", help="adapter name: letters, digits, '.', '_', '-'")
    p.set_defaults(targets=lambda a: ([("STORE", a.store, STORE_KIND)], [("input bundle", a.bundle),
                                                                         ("data file", a.data)]))
    p.add_argument("--bundle", required=True, type=Path, metavar="BUNDLE", help="backbone bundle folder")
    common.add_data_flags(p, labels=True, what="the new labelled samples, in time order")
    g = p.add_argument_group("gate")
    g.add_argument("--margin", type=flags.fraction, default=d.margin, metavar="M",
                   help=f"publish unless holdout accuracy drops by more than this (default {d.margin})")
    g.add_argument("--holdout-fraction", type=flags.fraction, default=d.holdout_fraction, metavar="F",
                   help=f"most recent share of each class of each session kept aside (default {d.holdout_fraction})")
    g.add_argument("--min-holdout", type=flags.positive_int, default=d.min_holdout, metavar="N",
                   help=f"defer until the holdout has this many samples (default {d.min_holdout})")
    g.add_argument("--max-implausible", type=_fraction_or_none, default=d.max_implausible, metavar="F|none",
                   help=f"reject if the current version finds more than this share of new labels implausible "
                        f"(default {d.max_implausible}; none: no label check)")
    g.add_argument("--keep-versions", type=flags.positive_int, default=d.keep_versions, metavar="N",
                   help=f"prune older unpinned versions beyond this many (default {d.keep_versions})")
    tr = p.add_argument_group("training")
    tr.add_argument("--recipe", choices=("chosen", "fixed"), default=d.recipe,
                    help="chosen: the recipe chosen on this device - the current version's recorded weight decay and "
                         "epochs, else (a new adapter) what cross-validation chooses, as `finetune` does; fixed: "
                         f"--epochs and --rank as given, weight decay {t.weight_decay} (default {d.recipe})")
    tr.add_argument("--epochs", type=flags.positive_int, default=None,
                    help=f"with --recipe fixed (default {t.epochs}); the chosen recipe has its own")
    tr.add_argument("--batch-size", type=flags.positive_int, default=t.batch_size, help=f"default {t.batch_size}")
    tr.add_argument("--lr", type=flags.positive_float, default=t.lr, help=f"default {t.lr}")
    tr.add_argument("--rank", dest="r", type=flags.positive_int, default=t.r, metavar="N",
                    help=f"rank of a new adapter (default {t.r})")
    tr.add_argument("--seed", type=int, default=t.seed, help=f"default {t.seed}")
    tr.add_argument("--cache-dtype", choices=("float32", "float16"), default=d.cache_dtype,
                    help=f"storage of the store's Skip-Cache (default {d.cache_dtype})")


def _fraction_or_none(text: str) -> float | None:
    if text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1] or 'none', found {text!r}")
    return value


def run(args: argparse.Namespace) -> dict:
    if args.epochs is not None and args.recipe == "chosen":
        raise ValueError(f"--epochs {args.epochs}: the number of epochs is part of the recipe chosen on this device "
                         "(--recipe chosen, the default); add --recipe fixed to train a fixed number of epochs")
    train = replace(SESSION_TRAINING, r=args.r, epochs=args.epochs or SESSION_TRAINING.epochs, batch_size=args.batch_size, lr=args.lr,
                    seed=args.seed)
    config = PersonalizeConfig(train=train, recipe=args.recipe, margin=args.margin, holdout_fraction=args.holdout_fraction,
                               min_holdout=args.min_holdout, max_implausible=args.max_implausible,
                               keep_versions=args.keep_versions, cache_dtype=args.cache_dtype)
    backbone = common.open_backbone(args)
    inputs, targets = common.load_data(args, backbone.manifest, labels=True)
    store = AdapterStore(args.store)
    result = personalize(store, args.name, backbone, inputs, targets, config)
    return {**result.to_dict(), "store": str(args.store), "data": str(args.data)}


def report(r: dict) -> str:
    s = r["samples"]
    lines = [f"{r['name']}: {r['decision'].upper()} - {r['reason']}",
             f"  samples: {s.get('new', 0)} new, {s.get('duplicates', 0)} already known"
             + (f"; training on {s['train']}, holdout {s['holdout_verified']} earlier + {s['holdout_new']} new"
                if "train" in s else "")
             + (f"; backbone ran on {s['backbone_runs']}" if "backbone_runs" in s else "")]
    if r["version"] is not None:
        lines.append(f"  candidate v{r['version']} (from {'v%d' % r['previous'] if r['previous'] else 'scratch'}); "
                     f"serving now: {'v%d' % r['current'] if r['current'] else 'the shared model'}")
    gate = r["metrics"].get("candidate", {}).get("gate")
    if gate:
        ref = r["metrics"]["reference"]["gate"]
        lines += ["  gate holdout      candidate  reference"] + \
                 [f"  {label:<17} {c:>9}  {v:>9}" for (label, c), (_, v) in
                  zip(common.metric_rows(gate), common.metric_rows(ref))]
    if "total" in r["seconds"]:
        lines.append(f"  time: {r['seconds']['total']:.2f} s")
    return "\n".join(lines)
