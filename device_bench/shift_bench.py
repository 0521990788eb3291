"""`python -m device_bench.shift_bench`: edgelora's default fine-tune against what a user would otherwise run,
on the protocols where the device's input itself shifted (device_bench/shifts.py, docs/shifts.md).

    python -m device_bench.shift_bench --protocol har-mount --shots 5,20 --seeds 5 [--set epochs=300 ...]

Per backbone, each method runs in its own process (device_bench.shift_worker: one thread, its own peak
RSS) over every (shots, seed) draw. Prints a table and writes results.json + results.md under
bench_out/shift/PROTOCOL (git-ignored). `--set FIELD=VALUE` (a TrainConfig field, VALUE as JSON or a
plain string) changes edgelora's run only, so a mechanism's gain can be reported on/off.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import fields
from pathlib import Path

import numpy as np

from edgelora import TrainConfig
from edgelora.files.fileio import atomic_write, dumps_json

from . import shifts
from .launch import REPO, spawn
from .run import device_info

OUT = REPO / "bench_out" / "shift"          # git-ignored
METHODS = ("edgelora", "torch-ft-all", "peft-lora")
NAMES = {"none": "no fine-tune", "edgelora": "edgelora default", "torch-ft-all": "PyTorch FT-All",
         "peft-lora": "PEFT LoRA r 8"}
REFERENCE = "torch-ft-all"                   # the time ratio's denominator


def parse_overrides(items: list[str]) -> dict:
    """['epochs=300', 'form=skip'] -> TrainConfig overrides, checked by TrainConfig itself."""
    known = {f.name for f in fields(TrainConfig)}
    out = {}
    for item in items:
        field, sep, value = item.partition("=")
        if not sep or field not in known:
            raise ValueError(f"--set expects FIELD=VALUE with FIELD one of TrainConfig's {sorted(known)}, "
                             f"found {item!r}")
        try:
            out[field] = json.loads(value)
        except json.JSONDecodeError:
            out[field] = value
    TrainConfig(**out)                       # a wrong value fails here, naming the field
    return out


def default_out(protocol: str, overrides: dict) -> Path:
    """bench_out/shift/PROTOCOL for today's defaults; a sub-folder named after the overrides otherwise, so an
    on/off run never replaces the baseline's results."""
    if not overrides:
        return OUT / protocol
    slug = ",".join(f"{k}={v if isinstance(v, str) else json.dumps(v, separators=(',', ':'))}"
                    for k, v in sorted(overrides.items()))
    return OUT / protocol / ("set-" + "".join(c if c.isalnum() or c in "=,.-_" else "_" for c in slug))


def positive_ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise ValueError(f"{what} should be positive integers separated by commas, found {text!r}")
    return values


def prepare(protocol: str, out: Path, bundles: Path, backbones: list[str] | None, log,
            statistics: tuple = ()) -> tuple[dict, dict]:
    """The protocol's data file for the workers and the chosen backbones' folders (pre-trained if missing)."""
    from . import shift_models          # torch: only the orchestrator and torch workers import it
    known = list(shift_models.BACKBONES[protocol])
    if unknown := sorted(set(backbones or []) - set(known)):
        raise ValueError(f"unknown backbone(s) {unknown} for {protocol}; expected some of {known}")
    data = shifts.build(protocol)
    path = out / "data.npz"
    tmp = out / "data.tmp.npz"
    np.savez(tmp, x_pool=data["pool"][0], y_pool=data["pool"][1], x_te=data["test"][0], y_te=data["test"][1],
             mean=data["mean"], std=data["std"])
    os.replace(tmp, path)
    folders = {name: str(shift_models.bundle(protocol, name, data, bundles, log, statistics))
               for name in known if not backbones or name in backbones}
    return {"path": str(path), "pool": len(data["pool"][1]), "test": len(data["test"][1]),
            "source": len(data["source"][1]), "shift": data["shift"]}, folders


def seconds(run: dict) -> float:
    """A run's time: edgelora's whole `finetune` call (`call_seconds`: every re-calibration candidate's fill and
    cross-validation included, which History's cache + train seconds leave out), else the worker's `seconds`."""
    return run.get("call_seconds", run["seconds"])


def summarise(reports: dict, base: float, shots: list[int]) -> dict:
    """Per shots and method: accuracy mean/std over seeds, harm count, time (the median over seeds: a process's
    first, cold run and bursts of load from other jobs would swing a mean), time ratio, peak RSS."""
    rows = {}
    for k in shots:
        rows[k] = {"none": {"mean": base}}
        ref_runs = [r for r in reports[REFERENCE]["runs"] if r["shots"] == k] if REFERENCE in reports else []
        ref = np.median([seconds(r) for r in ref_runs]) if ref_runs else None
        cpu_ref = np.median([r["cpu_seconds"] for r in ref_runs]) \
            if ref_runs and all("cpu_seconds" in r for r in ref_runs) else None
        for method, rep in reports.items():
            runs = [r for r in rep["runs"] if r["shots"] == k]
            acc = np.array([r["accuracy"] for r in runs])
            sec = float(np.median([seconds(r) for r in runs]))
            cpu = float(np.median([r["cpu_seconds"] for r in runs])) if all("cpu_seconds" in r for r in runs) else None
            rows[k][method] = {"accuracy": acc.tolist(), "mean": float(acc.mean()), "std": float(acc.std()),
                               "harm": int((acc < base - 1e-9).sum()), "seeds": len(acc), "seconds": sec,
                               "ratio": sec / ref if ref else None, "cpu_seconds": cpu,
                               "cpu_ratio": cpu / cpu_ref if cpu is not None and cpu_ref else None,
                               "peak_rss_mb": rep["peak_rss_mb"]}
    return rows


def table(protocol: str, results: dict) -> str:
    """The markdown table: one row per (backbone, shots): the lab's model on the unshifted test set, then on
    the shifted one, each method's accuracy % mean +- std (harm: seeds below no fine-tune), time ratio, RSS."""
    methods = [m for m in METHODS if m in results["methods"]]
    others = [m for m in methods if m != REFERENCE]
    rows = [row for b in results["backbones"].values() for row in b["rows"].values()]
    cpu = [m for m in others if all(row[m].get("cpu_ratio") is not None for row in rows)]
    head = ["backbone", "shots/class", "unshifted test (lab)", NAMES["none"]] + [NAMES[m] for m in methods] + \
        [f"time / {NAMES[REFERENCE]}: {NAMES[m]}" for m in others] + \
        [f"CPU time / {NAMES[REFERENCE]}: {NAMES[m]}" for m in cpu] + ["peak RSS MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, b in results["backbones"].items():
        for k, row in b["rows"].items():
            cells = [name, str(k), f"{100 * b['clean_test_accuracy']:.1f}", f"{100 * row['none']['mean']:.1f}"]
            cells += [f"{100 * row[m]['mean']:.1f} ± {100 * row[m]['std']:.1f} ({row[m]['harm']}/{row[m]['seeds']})"
                      for m in methods]
            cells += [f"{row[m]['ratio']:.2f}x" if row[m]["ratio"] is not None else "-" for m in others]
            cells += [f"{row[m]['cpu_ratio']:.2f}x" for m in cpu]
            cells.append(" / ".join(f"{row[m]['peak_rss_mb']:.0f}" for m in methods))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(protocol: str, shots: list[int], seeds: int, overrides: dict, methods=METHODS, backbones=None,
        out: Path | None = None, bundles: Path | None = None, log=print, statistics: tuple = ()) -> dict:
    """Run one protocol; writes results.json and results.md into `out`; returns the results."""
    out = Path(out) if out is not None else default_out(protocol, overrides)
    out.mkdir(parents=True, exist_ok=True)
    load = [os.getloadavg()[0]]
    t0 = time.time()
    info, folders = prepare(protocol, out, Path(bundles) if bundles else OUT / "bundles", backbones, log, statistics)
    with np.load(info["path"]) as f:
        y_pool = f["y_pool"]
    draws = [{"shots": k, "seed": s, "idx": shifts.draw(y_pool, k, s).tolist()} for k in shots for s in range(seeds)]
    log(f"{protocol}: source {info['source']}, pool {info['pool']}, test {info['test']}; "
        f"{len(draws)} draws; overrides {overrides or 'none'}; load {load[0]:.2f}")
    results = {"protocol": protocol, "shots": shots, "seeds": seeds, "overrides": overrides, "data": info,
               "methods": list(methods), "device": device_info(), "backbones": {}}
    for name, folder in folders.items():
        reports = {}
        for method in methods:
            spec = {"method": method, "folder": folder, "data": info["path"], "runs": draws, "overrides": overrides}
            reports[method] = spawn(spec, out / "specs", module="device_bench.shift_worker")
            load.append(os.getloadavg()[0])
            log(f"  {name:14s} {method:13s} " + "  ".join(
                f"{k}: {100 * np.mean([r['accuracy'] for r in reports[method]['runs'] if r['shots'] == k]):5.1f} %"
                for k in shots) + f"  peak RSS {reports[method]['peak_rss_mb']:.0f} MB")
        base = reports["edgelora"]["base_accuracy"] if "edgelora" in reports else float("nan")
        ref = json.loads((Path(folder) / "reference.json").read_text())
        results["backbones"][name] = {"folder": folder, "clean_test_accuracy": ref["clean_test_accuracy"],
                                      "base_accuracy": base, "rows": summarise(reports, base, shots),
                                      "reports": reports}
    results["load_average_1min"] = load
    results["seconds"] = time.time() - t0
    results["date"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    atomic_write(out / "results.json", dumps_json(results))
    log("\n" + write_markdown(results, out))
    return results


def write_markdown(results: dict, out: Path) -> str:
    """results.md in `out`: a header (seeds, shots, overrides, load, duration) and the table; returns it."""
    load = results["load_average_1min"]
    header = (f"### {results['protocol']}: {results['seeds']} seeds, shots {results['shots']}, overrides "
              f"{results['overrides'] or 'none'}; 1-min load {min(load):.2f}-{max(load):.2f}; "
              f"{results['seconds']:.0f} s; {results['date']} UTC")
    text = header + "\n\n" + table(results["protocol"], results) + "\n"
    atomic_write(Path(out) / "results.md", text.encode())
    return text


def render(path: str | Path) -> str:
    """Re-summarise a results.json from its workers' raw reports and rewrite the results.md beside it."""
    results = json.loads(Path(path).read_text())
    for b in results["backbones"].values():
        b["rows"] = summarise(b["reports"], b["base_accuracy"], results["shots"])
    return write_markdown(results, Path(path).parent)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocol", help="one of " + ", ".join(shifts.PROTOCOLS) + ", or all")
    ap.add_argument("--shots", default="5,20", help="labelled samples per class, comma-separated")
    ap.add_argument("--seeds", type=int, default=5, help="draws per shots (seeds 0..N-1)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="a TrainConfig field for edgelora's run (repeatable)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    ap.add_argument("--backbones", default="", help="comma-separated subset of the protocol's backbones")
    ap.add_argument("--out", default=None, help="results folder (default bench_out/shift/PROTOCOL, and a "
                                                "set-FIELD=VALUE sub-folder with --set)")
    ap.add_argument("--bundles", default=None, help="where the backbones are cached (default bench_out/shift/bundles)")
    ap.add_argument("--export-statistics", choices=("none", "all"), default="none",
                    help="export the backbones offering tap statistics (std, map: docs/taps.md); use its own --bundles")
    ap.add_argument("--render", metavar="RESULTS_JSON", help="only rewrite results.md from a results.json")
    args = ap.parse_args(argv)
    if args.render:
        return {"render": print(render(args.render))}
    if not args.protocol:
        ap.error("--protocol is required (or --render RESULTS_JSON)")
    protocols = list(shifts.PROTOCOLS) if args.protocol == "all" else [args.protocol]
    methods = [m for m in args.methods.split(",") if m]
    try:
        shots = positive_ints(args.shots, "--shots")
        overrides = parse_overrides(args.set)
        if args.seeds < 1:
            raise ValueError(f"--seeds should be a positive integer, found {args.seeds}")
        if unknown := sorted(set(methods) - set(METHODS)) or sorted(set(protocols) - set(shifts.PROTOCOLS)):
            raise ValueError(f"unknown {unknown}; expected protocols {list(shifts.PROTOCOLS)} and methods "
                             f"{list(METHODS)}")
    except ValueError as e:
        ap.error(str(e))
    backbones = [b for b in args.backbones.split(",") if b] or None
    return {p: run(p, shots, args.seeds, overrides, methods, backbones,
                   Path(args.out) / p if args.out and len(protocols) > 1 else args.out, args.bundles,
                   statistics=("std", "map") if args.export_statistics == "all" else ())
            for p in protocols}


if __name__ == "__main__":
    main()
