"""Serving many adapters over one backbone: the issue-7 targets on the fan reference MLP, one thread.

    python -m device_bench.serving [--out bench_out/serving] [--rounds 15]

1. adapter overhead at batch 1: AdapterServer.outputs(x, name) - AdapterServer.outputs(x, None), as a
   share of Backbone.features(x) (the serving layer's own cost vs the bare backbone is shown too)  <= 10 %
2. switching adapters reloads nothing of the backbone; loading an adapter from disk              <= 2 ms
3. a batch of 64 rows over 8 adapters vs a batch of 64 rows on one adapter                      <= 1.2 x
Timings interleave the variants round by round (the machine is shared) and report the median over
rounds of each round's mean per call; every round runs each variant CALLS times.
"""
from __future__ import annotations

import os

from .profile import THREADS_ENV

os.environ.update(THREADS_ENV)  # one thread everywhere, before numpy is imported

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from edgelora import Backbone, Predictor, TrainConfig, finetune, load_adapter  # noqa: E402
from edgelora.serve import AdapterServer, ServeConfig  # noqa: E402
from edgelora.store import AdapterStore  # noqa: E402

from . import protocols  # noqa: E402
from .backbones import REPO, reference_bundle  # noqa: E402

OUT = REPO / "bench_out" / "serving"
BUNDLES = REPO / "bench_out" / "bundles"
ADAPTERS = 8
BATCH = 64
ROUNDS = 15
CALLS = {1: 2000, BATCH: 300}   # calls per round and variant, by batch size
LOADS = 300


def timed(variants: dict, calls: int, rounds: int) -> dict[str, dict]:
    """{name: {median, min} seconds per call}, variants interleaved within every round."""
    per = {k: [] for k in variants}
    for f in variants.values():
        f()                                             # warm up (first loads, allocations)
    for _ in range(rounds):
        for name, f in variants.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                f()
            per[name].append((time.perf_counter() - t0) / calls)
    return {k: {"median": statistics.median(v), "min": min(v)} for k, v in per.items()}


def setup(out: Path) -> tuple[Backbone, AdapterStore, dict]:
    data = protocols.fan()
    backbone = Backbone(reference_bundle("fan", data, BUNDLES), threads=1)
    shutil.rmtree(out / "store", ignore_errors=True)
    store = AdapterStore(out / "store")
    x, y = data["finetune"]
    for i in range(ADAPTERS):          # eight different adapters: other seeds, other halves of the data
        part = np.arange(len(y)) % 2 == i % 2
        adapter, _ = finetune(backbone, x[part], y[part], TrainConfig(seed=i))
        store.set_current(f"site-{i}", store.add_version(f"site-{i}", adapter, parent=None, samples=int(part.sum())).version)
    return backbone, store, data


def run(out: Path = OUT, rounds: int = ROUNDS) -> dict:
    out = Path(out)
    backbone, store, data = setup(out)
    xt = data["test"][0]
    x1, x64 = xt[:1], xt[:BATCH]
    names = [f"site-{i}" for i in range(ADAPTERS)]
    server = AdapterServer(backbone, store)                                   # default: poll every 1 s
    live = AdapterServer(backbone, store, ServeConfig(poll_seconds=0.0))      # stat current.json every request
    adapter = store.load(names[0], manifest=backbone.manifest)
    core_with, core_without = Predictor(backbone, adapter), Predictor(backbone)
    session = backbone._session
    r: dict = {"bundle": str(backbone.bundle_dir), "taps": dict(zip(backbone.manifest.tap_names, backbone.tap_widths)),
               "classes": backbone.num_outputs, "rank": adapter.config.r, "rounds": rounds, "load": os.getloadavg()}

    b1 = timed({"backbone": lambda: backbone.features(x1), "server": lambda: server.outputs(x1, names[0]),
                "server_poll0": lambda: live.outputs(x1, names[0]), "server_shared": lambda: server.outputs(x1, None),
                "predictor_adapter": lambda: core_with.outputs(x1), "predictor_none": lambda: core_without.outputs(x1)},
               CALLS[1], rounds)
    base = b1["backbone"]["median"]
    r["batch1_us"] = {k: 1e6 * v["median"] for k, v in b1.items()}
    shared = b1["server_shared"]["median"]
    r["overhead"] = {"server": (b1["server"]["median"] - shared) / base,          # what using an adapter adds
                     "server_poll0": (b1["server_poll0"]["median"] - shared) / base,
                     "server_vs_bare_backbone": (b1["server"]["median"] - base) / base,  # + the serving layer
                     "predictor_adapter": (b1["predictor_adapter"]["median"] - b1["predictor_none"]["median"]) / base}

    cycle = iter(range(10**9))
    sw = timed({"same": lambda: server.outputs(x1, names[0]),
                "switching": lambda: server.outputs(x1, names[next(cycle) % ADAPTERS])}, CALLS[1], rounds)
    r["switch_us"] = {k: 1e6 * v["median"] for k, v in sw.items()}
    r["switch"] = {"backbone_session_unchanged": backbone._session is session, "adapter_loads": server.counts["loads"],
                   "adapter_reloads": server.counts["reloads"], "requests_per_adapter_load": None}

    folder = store.version_dir(names[1], 1)
    loads = {"store.load": [], "load_adapter": [], "cold_server_first_request": []}
    for _ in range(LOADS):
        for k, f in (("store.load", lambda: store.load(names[1], manifest=backbone.manifest)),
                     ("load_adapter", lambda: load_adapter(folder, backbone.manifest))):
            t0 = time.perf_counter()
            f()
            loads[k].append(time.perf_counter() - t0)
        fresh = AdapterServer(backbone, store)
        t0 = time.perf_counter()
        fresh.adapter(names[1])
        loads["cold_server_first_request"].append(time.perf_counter() - t0)
    r["load_ms"] = {k: {"median": 1e3 * statistics.median(v), "p95": 1e3 * float(np.percentile(v, 95))}
                    for k, v in loads.items()}

    rows = [names[i % ADAPTERS] for i in range(BATCH)]
    b64 = timed({"one_adapter": lambda: server.outputs(x64, names[0]), "eight_adapters": lambda: server.outputs(x64, rows),
                 "backbone": lambda: backbone.features(x64),
                 "eight_adapters_poll0": lambda: live.outputs(x64, rows)}, CALLS[BATCH], rounds)
    r["batch64_us"] = {k: 1e6 * v["median"] for k, v in b64.items()}
    r["mixed_ratio"] = b64["eight_adapters"]["median"] / b64["one_adapter"]["median"]
    r["mixed_ratio_poll0"] = b64["eight_adapters_poll0"]["median"] / b64["one_adapter"]["median"]
    r["targets"] = {
        "adapter overhead at batch 1 <= 10 % of backbone time": (r["overhead"]["server"], r["overhead"]["server"] <= 0.10),
        "loading an adapter from disk <= 2 ms": (r["load_ms"]["store.load"]["median"],
                                                r["load_ms"]["store.load"]["median"] <= 2.0),
        "switching reloads nothing of the backbone": (r["switch"]["backbone_session_unchanged"],
                                                      r["switch"]["backbone_session_unchanged"]),
        "64 rows over 8 adapters <= 1.2 x 64 rows on one": (r["mixed_ratio"], r["mixed_ratio"] <= 1.2)}
    r["load_after"] = os.getloadavg()
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(r, indent=1, sort_keys=True, default=str))
    (out / "results.md").write_text(report(r))
    return r


def report(r: dict) -> str:
    us, b64 = r["batch1_us"], r["batch64_us"]
    lines = [f"Serving targets (fan reference MLP, taps {r['taps']}, rank {r['rank']}, 1 thread; medians over "
             f"{r['rounds']} interleaved rounds; load average {r['load'][0]:.2f} -> {r['load_after'][0]:.2f})", "",
             "| measurement | value |", "|---|---|",
             f"| batch 1: Backbone.features | {us['backbone']:.1f} us |",
             f"| batch 1: AdapterServer, shared model (no adapter) | {us['server_shared']:.1f} us |",
             f"| batch 1: AdapterServer, adapter (pointer checked every 1 s) | {us['server']:.1f} us: adapter adds "
             f"{100 * r['overhead']['server']:.1f} % of backbone time; {100 * r['overhead']['server_vs_bare_backbone']:+.1f} % "
             f"vs the bare backbone |",
             f"| batch 1: AdapterServer, adapter, pointer stat-ed every request | {us['server_poll0']:.1f} us "
             f"(adapter adds {100 * r['overhead']['server_poll0']:.1f} %) |",
             f"| batch 1: core Predictor with adapter (lora.forward) / without | {us['predictor_adapter']:.1f} / "
             f"{us['predictor_none']:.1f} us (adapter adds {100 * r['overhead']['predictor_adapter']:.1f} %) |",
             f"| batch 1: same adapter every request / a different one of 8 each request | "
             f"{r['switch_us']['same']:.1f} / {r['switch_us']['switching']:.1f} us |",
             f"| switching: backbone session unchanged, adapter loads | {r['switch']['backbone_session_unchanged']}, "
             f"{r['switch']['adapter_loads']} (once per adapter) |"]
    for k, v in r["load_ms"].items():
        lines.append(f"| load from disk: {k} | median {v['median']:.2f} ms, p95 {v['p95']:.2f} ms |")
    lines += [f"| batch 64: Backbone.features | {b64['backbone']:.1f} us |",
              f"| batch 64: one adapter / 8 adapters (8 rows each) | {b64['one_adapter']:.1f} / "
              f"{b64['eight_adapters']:.1f} us (x{r['mixed_ratio']:.3f}) |",
              f"| batch 64: 8 adapters, pointers stat-ed every request | {b64['eight_adapters_poll0']:.1f} us "
              f"(x{r['mixed_ratio_poll0']:.3f}) |", ""]
    for name, (value, ok) in r["targets"].items():
        shown = f"{100 * value:.1f} %" if "overhead" in name else f"{value:.2f} ms" if "ms" in name else \
            f"x{value:.3f}" if "1.2" in name else str(value)
        lines.append(f"{'PASS' if ok else 'MISS'}  {name}: {shown}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--rounds", type=int, default=ROUNDS)
    args = ap.parse_args(argv)
    r = run(args.out, args.rounds)
    print(report(r))
    return r


if __name__ == "__main__":
    main()
