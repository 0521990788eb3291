"""`edgelora store list|show|rollback|delete|pin`: look after the named, versioned adapters of a store."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..ops.store import AdapterStore
from ..ops.versions import parse_version
from . import common

EXAMPLE = """
edgelora store list /var/lib/edgelora/store
edgelora store show /var/lib/edgelora/store user-42
edgelora store rollback /var/lib/edgelora/store user-42            # back to the current version's parent
edgelora store rollback /var/lib/edgelora/store user-42 --to 3
edgelora store pin /var/lib/edgelora/store user-42 --version 3      # never deleted or pruned
edgelora store delete /var/lib/edgelora/store user-42 --version 2
edgelora store delete /var/lib/edgelora/store user-42 --force       # the adapter, its versions and data
"""
ACTIONS = ("list", "show", "rollback", "delete", "pin")


def register(subparsers) -> None:
    p = common.add_command(
        subparsers, "store", run, report,
        description="An adapter store (written by `edgelora personalize`) keeps named adapters, each a list of "
                    "immutable versions and a current version that serving uses. list: every adapter; show: one "
                    "adapter's versions (date, samples, parent, gate decision and reason); rollback: serve the "
                    "current version's parent, or --to a version; pin: protect a version from delete and "
                    "pruning (--unpin to undo); delete: a version, or the whole adapter. The current version and "
                    "pinned versions are only deleted with --force.",
        example=EXAMPLE)
    p.add_argument("action", choices=ACTIONS, help="what to do")
    p.add_argument("store", type=Path, metavar="STORE", help="adapter store folder")
    p.add_argument("name", nargs="?", default=None, metavar="NAME", help="adapter name (all actions but list)")
    p.add_argument("--to", type=parse_version_arg, default=None, metavar="V", help="rollback: the version to serve")
    p.add_argument("--version", dest="version_", type=parse_version_arg, default=None, metavar="V",
                   help="delete / pin: the version (pin defaults to the current one)")
    p.add_argument("--unpin", action="store_true", help="pin: remove the protection instead")
    p.add_argument("--force", action="store_true", help="delete: also the current version or pinned versions")


def parse_version_arg(text: str) -> int:
    try:
        return parse_version(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def run(args: argparse.Namespace) -> dict:
    store = AdapterStore(args.store, create=False)
    if args.action == "list":
        return {"action": "list", "store": str(args.store),
                "adapters": [_brief(store, name) for name in store.names()]}
    if args.name is None:
        raise ValueError(f"`edgelora store {args.action}` needs an adapter NAME (adapters: {store.names()})")
    name = args.name
    result = {"action": args.action, "store": str(args.store), "name": name}
    if args.action == "rollback":
        before = store.current(name)
        result.update(previous=before, current=store.rollback(name, args.to))
    elif args.action == "pin":
        version = args.version_ if args.version_ is not None else store.current(name)
        if version is None:
            raise ValueError(f"adapter {name!r} has no current version; name one with --version")
        result.update(version=version, pins=store.pin(name, version, pinned=not args.unpin), unpinned=args.unpin)
    elif args.action == "delete":
        result.update(version=args.version_, removed=store.delete(name, args.version_, force=args.force))
        return result
    result.update(store.summary(name))
    for v in result["versions"]:  # where each version lives: `--adapter STORE/NAME@vN` names the same folder
        v["path"] = str(store.version_dir(name, v["version"]))
    result["path"] = None if result["current"] is None else str(store.version_dir(name, result["current"]))
    return result


def _brief(store: AdapterStore, name: str) -> dict:
    versions = store.versions(name)
    cur = store.current(name)
    return {"name": name, "current": cur, "versions": len(versions), "pins": store.pins(name),
            "latest": versions[-1].version if versions else None,
            "latest_status": versions[-1].status if versions else None,
            "latest_created": versions[-1].created if versions else None}


def report(r: dict) -> str:
    if r["action"] == "list":
        if not r["adapters"]:
            return f"{r['store']}: no adapters yet"
        lines = [f"{r['store']}: {len(r['adapters'])} adapter(s)",
                 f"  {'name':<24} {'current':>7} {'versions':>8}  latest"]
        for a in r["adapters"]:
            cur = f"v{a['current']}" if a["current"] else "-"
            latest = f"v{a['latest']} {a['latest_status']} {a['latest_created']}" if a["latest"] else "-"
            pins = f"  pinned {['v%d' % v for v in a['pins']]}" if a["pins"] else ""
            lines.append(f"  {a['name']:<24} {cur:>7} {a['versions']:>8}  {latest}{pins}")
        return "\n".join(lines)
    if r["action"] == "delete":
        what = f"v{r['version']}" if r["version"] else "the adapter and all its data"
        return f"{r['name']}: deleted {what} (versions removed: {r['removed'] or 'none'})"
    head = {"rollback": f"{r['name']}: now serving v{r.get('current')} (was v{r.get('previous')})",
            "pin": f"{r['name']}: v{r.get('version')} {'unpinned' if r.get('unpinned') else 'pinned'}",
            "show": f"{r['name']} in {r['store']}"}[r["action"]]
    lines = [head, f"  current: {'v%d' % r['current'] if r['current'] else 'none'}; "
                   f"pinned: {['v%d' % v for v in r['pins']] or 'none'}"]
    for v in r["versions"]:
        mark = "*" if v["version"] == r["current"] else " "
        parent = f"v{v['parent']}" if v["parent"] else "-"
        lines.append(f" {mark}v{v['version']:<4} {v['created']}  {v['status']:<8} samples {v['samples']:<6} "
                     f"parent {parent:<5} {v['reason']}")
        lines.append(f"        {v['path']}")
    if r["action"] == "show":
        lines.append(f"  use it as --adapter {Path(r['store']) / r['name']} (current) or "
                     f"{Path(r['store']) / r['name']}@vN")
    return "\n".join(lines)
