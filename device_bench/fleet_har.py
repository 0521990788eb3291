"""Fleets on real data (har): 30 volunteers as 30 devices, shared vs local vs central vs personal adapters.

    python -m device_bench.fleet_har [--seeds 3] [--rounds 20] [--strategies fedavg fedavgm] [--out DIR]
    python -m device_bench.fleet_har --dtype-check      # float16 vs float32 updates, 5 rounds

Devices: each of the 21 source users holds all its windows, each of the 9 test users the first half (time
order) of its windows; the test users' second halves are never seen by any training, selection or server
step, and are used only to report. The edgelora ClientApp and ServerApp run unchanged on an in-process
Flower grid (edgelora.fleet.local_grid; the loopback deployment is device_bench/fleet.py). Per seed:
- none:     the reference backbone without adapter;
- local:    each test user's adapter trained on its own fine-tune half (TrainConfig defaults);
- central:  one adapter trained on all devices' samples pooled (TrainConfig defaults, random 20 % validation);
- shared:   the fleet's shared adapter after `rounds` rounds, for each strategy;
- personal: each test user's personal adapter on top of the chosen strategy's shared adapter, through its
            adapter store and holdout gate (edgelora.fleet.personal).
The strategy is chosen on the devices' own validation splits (federated evaluation), not on test data.
Writes DIR/results.json and DIR/results.md.
"""
from __future__ import annotations

import os

from .profile import THREADS_ENV

os.environ.update(THREADS_ENV)  # one thread everywhere, before numpy is imported
os.environ.setdefault("FLWR_LOG_LEVEL", "WARNING")  # Flower logs every round at INFO

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from edgelora import Backbone, Predictor, TrainConfig, finetune  # noqa: E402
from edgelora.fleet.client_app import app as client_app  # noqa: E402
from edgelora.fleet.device import RoundSettings  # noqa: E402
from edgelora.fleet.local_grid import LocalGrid  # noqa: E402
from edgelora.fleet.personal import personalize_on_shared  # noqa: E402
from edgelora.fleet.server_app import run_fleet  # noqa: E402
from edgelora.fleet.settings import FleetSettings  # noqa: E402
from edgelora.ops.store import AdapterStore  # noqa: E402

from . import protocols  # noqa: E402
from .backbones import REPO, reference_bundle  # noqa: E402

OUT = REPO / "bench_out" / "fleet_har"
BUNDLES = REPO / "bench_out" / "bundles"   # shared with `python -m device_bench run`
ROUNDS = 20
LOCAL_EPOCHS = 2
STRATEGIES = {"fedavg": {"strategy": "fedavg"},
              "fedavgm": {"strategy": "fedavgm", "server_momentum": 0.5, "server_lr": 1.0}}


def devices(data: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{name: (x, y)}: the 21 source users' windows and the 9 test users' fine-tune halves."""
    d = protocols._load("hapt_raw/hapt_raw_w128.npz")
    keep = d["y"] < 6
    subj = d["subject"][keep]
    src_subj = subj[~np.isin(subj, list(data["users"]))]   # protocols.har keeps source windows in file order
    xs, ys = data["source"]
    out = {f"src-{u:02d}": (xs[src_subj == u], ys[src_subj == u]) for u in np.unique(src_subj)}
    out.update({f"test-{u:02d}": data["users"][u]["finetune"] for u in data["users"]})
    return out


def write_devices(root: Path, bundle: Path, data: dict) -> list[dict]:
    """Each device's samples as ROOT/devices/NAME.npz (replacing ROOT) and its node config."""
    shutil.rmtree(root, ignore_errors=True)
    (root / "devices").mkdir(parents=True)
    nodes = []
    for name, (x, y) in devices(data).items():
        np.savez(root / "devices" / f"{name}.npz", x=x, y=y)
        nodes.append({"bundle": str(bundle), "data": str(root / "devices" / f"{name}.npz"),
                      "workdir": str(root / "devices" / name)})
    return nodes


def per_user(backbone: Backbone, data: dict, adapters: dict) -> dict[int, float]:
    """Test-half accuracy of each test user with its adapter (one adapter for all, or {user: adapter})."""
    return {u: Predictor(backbone, adapters.get(u) if isinstance(adapters, dict) else adapters)
            .evaluate(*data["users"][u]["test"])["accuracy"] for u in data["users"]}


def federate(root: Path, bundle: Path, nodes: list[dict], data: dict, backbone: Backbone, seed: int,
             rounds: int, extra: dict) -> dict:
    """One federation on the in-process grid; the per-round test curve is for reporting only."""
    curve = []
    settings = FleetSettings(bundle=str(bundle), out=str(root / "shared"), num_rounds=rounds, min_clients=len(nodes),
                             seed=seed, evaluate=True, round=RoundSettings(local_epochs=LOCAL_EPOCHS, seed=seed),
                             **extra)
    start = time.perf_counter()
    log = run_fleet(LocalGrid(client_app, nodes), settings,
                    on_round=lambda info, shared: curve.append(float(np.mean(list(
                        per_user(backbone, data, shared).values())))))
    seconds = time.perf_counter() - start
    last = log["rounds"][-1]
    best = max(curve)
    return {"test_curve": curve, "val_curve": [r.get("evaluate", {}).get("accuracy") for r in log["rounds"]],
            "val_loss_curve": [r.get("evaluate", {}).get("loss") for r in log["rounds"]],
            "best_round": log.get("best_round"), "best_val_loss": log.get("best_loss"),
            "test_at_best_round": curve[log["best_round"] - 1] if log.get("best_round") else None,
            "rounds_to_converge": 1 + next(i for i, a in enumerate(curve) if a >= best - 0.005),
            "reply_bytes_max": max(max(r["reply_bytes"]) for r in log["rounds"]),
            "update_bytes_max": max(max(r["update_bytes"]) for r in log["rounds"]),
            "rejected": sum(len(r["rejected"]) for r in log["rounds"]), "seconds": seconds,
            "seconds_per_round": seconds / rounds, "last_round": {k: last[k] for k in ("accepted", "samples")}}


def run_seed(seed: int, out: Path, rounds: int, strategies: list[str], log=print) -> dict:
    data = protocols.har()
    bundle = reference_bundle("har", data, BUNDLES)
    backbone = Backbone(bundle, threads=1)
    root = out / f"seed{seed}"
    nodes = write_devices(root, bundle, data)
    res = {"seed": seed, "devices": len(nodes), "none": per_user(backbone, data, {})}
    t = time.perf_counter()
    res["local"] = per_user(backbone, data, {u: finetune(backbone, *data["users"][u]["finetune"],
                                                         TrainConfig(seed=seed))[0] for u in data["users"]})
    res["local_seconds"] = time.perf_counter() - t
    xs = np.concatenate([np.load(n["data"])["x"] for n in nodes])
    ys = np.concatenate([np.load(n["data"])["y"] for n in nodes])
    t = time.perf_counter()
    central = finetune(backbone, xs, ys, TrainConfig(seed=seed, val_split="random"))[0]
    res["central_seconds"] = time.perf_counter() - t
    res["central"] = per_user(backbone, data, central)
    res["fleet"] = {}
    for name in strategies:
        res["fleet"][name] = federate(root / name, bundle, nodes, data, backbone, seed, rounds, STRATEGIES[name])
        log(f"  seed {seed} {name}: test {100 * res['fleet'][name]['test_curve'][-1]:.1f} %, "
            f"{res['fleet'][name]['seconds_per_round']:.2f} s/round")
    chosen = min(strategies, key=lambda s: res["fleet"][s]["best_val_loss"])   # devices' validation, not test
    res["chosen"] = chosen
    shared_dir = root / chosen / "shared"
    from edgelora import load_adapter
    shared = load_adapter(shared_dir, backbone.manifest)
    res["shared"] = per_user(backbone, data, shared)
    personal, decisions = {}, {}
    for u in data["users"]:
        store = AdapterStore(root / "personal" / f"user-{u:02d}")
        r = personalize_on_shared(store, "me", backbone, shared, *data["users"][u]["finetune"])
        personal[u], decisions[u] = store.load("me", manifest=backbone.manifest), r.decision
    res["personal"] = per_user(backbone, data, personal)
    res["personal_decisions"] = decisions
    res["full_model_bytes"] = int((Path(bundle) / "backbone.onnx").stat().st_size)
    return res


def summarise(seeds: list[dict]) -> dict:
    users = list(seeds[0]["none"])
    mean = {k: float(np.mean([np.mean(list(s[k].values())) for s in seeds]))
            for k in ("none", "local", "central", "shared", "personal")}
    std = {k: float(np.std([np.mean(list(s[k].values())) for s in seeds]))
           for k in ("none", "local", "central", "shared", "personal")}
    per = {k: {u: float(np.mean([s[k][u] for s in seeds])) for u in users}
           for k in ("none", "local", "shared", "personal")}
    wins = [u for u in users if per["personal"][u] >= max(per["local"][u], per["shared"][u]) - 1e-9]
    strategies = list(seeds[0]["fleet"])
    fleet = {s: {"test_final": float(np.mean([r["fleet"][s]["test_curve"][-1] for r in seeds])),
                 "test_best_round": float(np.mean([r["fleet"][s]["test_at_best_round"] for r in seeds])),
                 "best_round": [r["fleet"][s]["best_round"] for r in seeds],
                 "best_val_loss": float(np.mean([r["fleet"][s]["best_val_loss"] for r in seeds])),
                 "rounds_to_converge": [r["fleet"][s]["rounds_to_converge"] for r in seeds],
                 "seconds_per_round": float(np.mean([r["fleet"][s]["seconds_per_round"] for r in seeds])),
                 "reply_bytes_max": max(r["fleet"][s]["reply_bytes_max"] for r in seeds),
                 "update_bytes_max": max(r["fleet"][s]["update_bytes_max"] for r in seeds)} for s in strategies}
    return {"mean": mean, "std": std, "per_user": per, "personal_wins": wins, "fleet": fleet,
            "chosen": [s["chosen"] for s in seeds], "full_model_bytes": seeds[0]["full_model_bytes"],
            "targets": {"shared_within_1_point_of_central": mean["shared"] >= mean["central"] - 0.01,
                        "personal_best_for_7_of_9": len(wins) >= 7,
                        "at_most_10_kB_per_client_round": max(f["reply_bytes_max"] for f in fleet.values()) <= 10_000}}


def markdown(result: dict) -> str:
    s = result["summary"]
    lines = [f"har, {result['devices']} devices, {result['rounds']} rounds x {LOCAL_EPOCHS} local epochs, "
             f"seeds {result['seeds']} (mean ± std of the 9 test users' mean test accuracy)", "",
             "| adapter | accuracy |", "|---|---|"]
    for k in ("none", "local", "central", "shared", "personal"):
        lines.append(f"| {k} | {100 * s['mean'][k]:.1f} ± {100 * s['std'][k]:.1f} % |")
    lines += ["", "| strategy | devices' val loss (best round) | best round | test there | test after last round "
              "| rounds to within 0.5 of best test | s/round | bytes sent per device and round |",
              "|---|---|---|---|---|---|---|---|"]
    for name, f in s["fleet"].items():
        lines.append(f"| {name} | {f['best_val_loss']:.4f} | {f['best_round']} | {100 * f['test_best_round']:.1f} % | "
                     f"{100 * f['test_final']:.1f} % | {f['rounds_to_converge']} | {f['seconds_per_round']:.2f} | "
                     f"{f['reply_bytes_max']} (update {f['update_bytes_max']}) |")
    lines += ["", "| user | none | local | shared | personal |", "|---|---|---|---|---|"]
    for u in s["per_user"]["none"]:
        lines.append(f"| {u} | " + " | ".join(f"{100 * s['per_user'][k][u]:.1f}"
                                             for k in ("none", "local", "shared", "personal")) + " |")
    lines += ["", f"chosen strategy per seed: {s['chosen']}; personal >= max(local, shared) for "
              f"{len(s['personal_wins'])} of 9 users; full model {s['full_model_bytes']} bytes", "",
              "targets: " + ", ".join(f"{k} {'PASS' if v else 'MISS'}" for k, v in s["targets"].items())]
    return "\n".join(lines) + "\n"


def dtype_check(out: Path, rounds: int = 5) -> dict:
    """The same federation with float32 and float16 updates (seed 0): how far apart the shared adapters end."""
    data = protocols.har()
    bundle = reference_bundle("har", data, BUNDLES)
    backbone = Backbone(bundle, threads=1)
    flats, res = {}, {}
    for dtype in ("float32", "float16"):
        root = out / f"dtype-{dtype}"
        nodes = write_devices(root, bundle, data)
        settings = FleetSettings(bundle=str(bundle), out=str(root / "shared"), num_rounds=rounds,
                                 min_clients=len(nodes), round=RoundSettings(local_epochs=LOCAL_EPOCHS,
                                                                             update_dtype=dtype))
        log = run_fleet(LocalGrid(client_app, nodes), settings)
        from edgelora import load_adapter
        shared = load_adapter(root / "shared", backbone.manifest)
        flats[dtype] = shared.flat
        res[dtype] = {"test": float(np.mean(list(per_user(backbone, data, shared).values()))),
                      "reply_bytes": max(log["rounds"][-1]["reply_bytes"])}
    diff = flats["float16"] - flats["float32"]
    res["max_abs_diff"] = float(np.abs(diff).max())
    res["relative_l2"] = float(np.linalg.norm(diff) / np.linalg.norm(flats["float32"]))
    print(json.dumps(res, indent=1))
    return res


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtype-check", action="store_true",
                   help="instead: 5 rounds with float32 and with float16 updates, compared")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--rounds", type=int, default=ROUNDS)
    p.add_argument("--strategies", nargs="+", choices=sorted(STRATEGIES), default=list(STRATEGIES))
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    if a.dtype_check:
        return dtype_check(a.out)
    start = time.perf_counter()
    seeds = [run_seed(s, a.out, a.rounds, a.strategies) for s in range(a.seeds)]
    result = {"devices": seeds[0]["devices"], "rounds": a.rounds, "local_epochs": LOCAL_EPOCHS,
              "seeds": list(range(a.seeds)), "strategies": {k: STRATEGIES[k] for k in a.strategies},
              "per_seed": seeds, "seconds": time.perf_counter() - start}
    result["summary"] = summarise(seeds)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "results.json").write_text(json.dumps(result, indent=1, sort_keys=True, default=float))
    (a.out / "results.md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
