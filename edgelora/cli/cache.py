"""`edgelora cache info|clear`: what the on-disk Skip-Cache of a bundle holds, and deleting it."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..runtime.cache import CACHE_DIR_KIND, SkipCache, cache_folders, folder_name
from . import common

EXAMPLE = """
edgelora cache info fan_bundle --cache-dir /var/cache/edgelora
edgelora cache clear fan_bundle --cache-dir /var/cache/edgelora --cache-dtype float16
"""
DTYPES = ("float32", "float16")


def register(subparsers) -> None:
    p = common.add_command(
        subparsers, "cache", run, report,
        description="The Skip-Cache keeps the backbone's outputs per sample (written by `edgelora finetune "
                    "--cache-dir`). `info` lists the rows and bytes cached for BUNDLE's backbone (checking each "
                    "row's checksum); `clear` deletes them. Caches of other backbones in DIR are left alone.",
        example=EXAMPLE)
    p.add_argument("action", choices=("info", "clear"), help="info: show; clear: delete")
    p.add_argument("bundle", type=Path, metavar="BUNDLE", help="backbone bundle folder")
    p.add_argument("--cache-dir", required=True, type=Path, metavar="DIR", help="the cache directory")
    p.add_argument("--cache-dtype", choices=DTYPES, default=None, help="only this storage dtype (default: both)")
    p.set_defaults(targets=lambda a: ([("--cache-dir", a.cache_dir if a.action == "clear" else None, CACHE_DIR_KIND)],
                                      [("input bundle", a.bundle)]))


def run(args: argparse.Namespace) -> dict:
    if not args.cache_dir.is_dir():
        raise FileNotFoundError(f"cache directory not found: {args.cache_dir}")
    backbone = common.open_backbone(args)
    prefix = folder_name(backbone.identity, "")
    caches = []
    for dtype in (args.cache_dtype,) if args.cache_dtype else DTYPES:
        if not (args.cache_dir / folder_name(backbone.identity, dtype)).is_dir():
            continue  # opening a SkipCache would create it; info and clear must not
        cache = SkipCache(backbone, args.cache_dir, dtype=dtype)
        stats = cache.stats()
        if args.action == "clear":
            cache.clear()
        caches.append({k: stats[k] for k in ("dtype", "rows", "bytes", "path", "repaired_rows")} |
                      ({"cleared": True} if args.action == "clear" else {}))
    others = [name for name in cache_folders(args.cache_dir) if not name.startswith(prefix)]
    return {"action": args.action, "bundle": str(args.bundle), "fingerprint": backbone.identity,
            "cache_dir": str(args.cache_dir), "caches": caches, "other_backbones": others}


def report(r: dict) -> str:
    verb = "cleared" if r["action"] == "clear" else "holds"
    lines = [f"{r['cache_dir']}: cache of backbone {r['fingerprint'][:23]}..."]
    if not r["caches"]:
        lines.append("  nothing cached for this backbone")
    for c in r["caches"]:
        repaired = f", {c['repaired_rows']} damaged rows dropped" if c["repaired_rows"] else ""
        lines.append(f"  {c['dtype']}: {verb} {c['rows']} rows, {common.human_bytes(c['bytes'])} ({c['path']}){repaired}")
    if r["other_backbones"]:
        lines.append(f"  also in this folder: {len(r['other_backbones'])} cache(s) of other backbones, left alone")
    return "\n".join(lines)
