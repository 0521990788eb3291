"""Poisoning a fleet on real data (har): 30 devices as in fleet_har, 1 or 3 of them malicious.

    python -m device_bench.fleet_poison [--seeds 0 1 2] [--rounds 3] [--rules mean median trimmed] [--out DIR]
    python -m device_bench.fleet_poison --merge DIR...     # one table from runs made apart (e.g. one per seed)
    python -m device_bench.fleet_poison --server-attack DIR # then a hostile server: NaN and 3e38 adapters

Devices are fleet_har's (21 source users with all their windows, 9 test users with their first halves);
the malicious ones are the first 1 or 3 source users, running device_bench.faulty_client's attacks: liar
(10^6 samples, +999 on one class's bias), bias (the same with its honest count), scale (x50), replay (its
first update again), eval-lie (10^9 samples, loss -1e30), eval-nan (NaN loss), eval-steer (loss 1e30
until the last round, then 0). Every fleet evaluates (the server keeps the round with the lowest
weighted validation loss, bounded: edgelora.fleet.evaluation), for `rounds` rounds of 2 local
epochs. Reported: the mean test-half accuracy of the 9 test users with the kept shared adapter, against
the honest-only fleet under the same rule and against `fedavg` (the unbounded sample-weighted mean the
fleet used before robust aggregation); and whether every device's store still loads its shared adapter.
Writes DIR/results.json and DIR/results.md. `--server-attack DIR` takes the 30 devices a run left in
DIR/work and sends each a NaN and a 3e38 shared adapter: each must refuse both and still serve the shared
adapter it had, and then accept a good one.
"""
from __future__ import annotations

import os

from .profile import THREADS_ENV

os.environ.update(THREADS_ENV)  # one thread everywhere, before numpy is imported
os.environ.setdefault("FLWR_LOG_LEVEL", "ERROR")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from edgelora import Backbone, load_adapter  # noqa: E402
from edgelora.fleet.device import FleetDevice, RoundSettings  # noqa: E402
from edgelora.fleet.update import AdapterSpec, flat_sha256  # noqa: E402
from edgelora.fleet.local_grid import LocalGrid  # noqa: E402
from edgelora.fleet.server_app import run_fleet  # noqa: E402
from edgelora.fleet.settings import FleetSettings  # noqa: E402
from edgelora.ops.store import AdapterStore  # noqa: E402

from . import faulty_client, protocols  # noqa: E402
from .backbones import REPO, reference_bundle  # noqa: E402
from .fleet_har import BUNDLES, LOCAL_EPOCHS, per_user, write_devices  # noqa: E402

OUT = REPO / "bench_out" / "fleet_poison"
ROUNDS = 3
ATTACKS = ("liar", "bias", "scale", "replay", "eval-lie", "eval-nan", "eval-steer")
MALICIOUS = (1, 3)
logging.getLogger("flwr").setLevel(logging.ERROR)


def stores_usable(nodes: list[dict], backbone: Backbone) -> bool:
    """Every device that received a shared adapter can still load the one it serves."""
    for n in nodes:
        store = AdapterStore(Path(n["workdir"]) / "store")
        if store.exists("fleet") and store.current("fleet") is not None:
            try:
                store.load("fleet", manifest=backbone.manifest)
            except ValueError:
                return False
    return True


def server_attack(work: Path) -> dict:
    """Every device of a finished run in `work` is sent a NaN, then a 3e38 shared adapter, then a good one."""
    spec = AdapterSpec.from_record(json.loads((work / "shared.rounds.json").read_text())["spec"])
    refused, same, accepted = 0, 0, 0
    nodes = sorted(p for p in (work / "devices").iterdir() if p.is_dir())
    for workdir in nodes:
        device = FleetDevice.from_files(bundle_of(work), workdir.with_suffix(".npz"), workdir)
        before = device.latest_shared()
        for value in (np.nan, 3e38):
            bad = before.flat.copy()
            bad[0] = value
            try:
                device.receive(spec, bad, 99)
            except ValueError:
                refused += 1
        same += flat_sha256(device.latest_shared().flat) == flat_sha256(before.flat)
        device.receive(spec, before.flat * 0.5, 100)
        accepted += flat_sha256(device.latest_shared().flat) == flat_sha256(before.flat * 0.5)
    return {"devices": len(nodes), "refused": refused, "attempts": 2 * len(nodes), "still_serving_last_good": same,
            "accepted_next_good": accepted}


def bundle_of(work: Path) -> str:
    return json.loads((work / "shared.rounds.json").read_text())["settings"]["bundle"]


def one_fleet(root: Path, bundle: Path, data: dict, backbone: Backbone, seed: int, rounds: int, rule: str,
              attack: str | None, k: int) -> dict:
    nodes = write_devices(root, bundle, data)
    for n in nodes[:k]:
        n["fault"], n["steer-round"] = attack, rounds
    settings = FleetSettings(bundle=str(bundle), out=str(root / "shared"), num_rounds=rounds, min_clients=len(nodes) - k,
                             seed=seed, evaluate=True, aggregation=rule,
                             round=RoundSettings(local_epochs=LOCAL_EPOCHS, seed=seed))
    start = time.perf_counter()
    log = run_fleet(LocalGrid(faulty_client.app, nodes), settings)
    shared = load_adapter(root / "shared", backbone.manifest)
    return {"accuracy": float(np.mean(list(per_user(backbone, data, shared).values()))),
            "best_round": log.get("best_round"), "stores_usable": stores_usable(nodes, backbone),
            "rejected": sum(len(r["rejected"]) for r in log["rounds"]),
            "evaluate_rejected": sum(len(r.get("evaluate_rejected", [])) for r in log["rounds"]),
            "seconds": time.perf_counter() - start}


def run(out: Path, seeds: list[int], rounds: int, rules: list[str], attacks: list[str], attack_fedavg: bool = False,
        log=print) -> dict:
    data = protocols.har()
    bundle = reference_bundle("har", data, BUNDLES)
    backbone = Backbone(bundle, threads=1)
    res = {}
    for seed in seeds:
        for rule in rules:
            attacked = rule != "fedavg" or attack_fedavg   # fedavg: the honest reference, unless asked
            cases = [(None, 0)] + ([(a, k) for a in attacks for k in MALICIOUS] if attacked else [])
            for attack, k in cases:
                key = f"{rule}/{attack or 'honest'}/{k}"
                r = one_fleet(out / "work", bundle, data, backbone, seed, rounds, rule, attack, k)
                res.setdefault(key, []).append(r)
                log(f"  seed {seed} {key}: {100 * r['accuracy']:.2f} % (round {r['best_round']}, "
                    f"rejected {r['rejected']}+{r['evaluate_rejected']}, stores usable {r['stores_usable']}, "
                    f"{r['seconds']:.0f} s)")
    return res


def summarise(res: dict) -> dict:
    acc = {key: float(np.mean([r["accuracy"] for r in runs])) for key, runs in res.items()}
    rows = {}
    for key in res:
        rule, attack, k = key.split("/")
        honest = acc[f"{rule}/honest/0"]
        rows[key] = {"accuracy": acc[key], "vs_honest": acc[key] - honest,
                     "stores_usable": all(r["stores_usable"] for r in res[key]),
                     "within_1_point": acc[key] >= honest - 0.01}
    today = acc.get("fedavg/honest/0")
    for key, row in rows.items():
        if key.endswith("honest/0") and today is not None:
            row["vs_today"] = row["accuracy"] - today
    return rows


def markdown(rows: dict, args) -> str:
    lines = [f"har, 30 devices, {args.rounds} rounds x {LOCAL_EPOCHS} local epochs, kept round by the devices' "
             f"bounded weighted validation loss; seeds {args.seeds} (mean of the 9 test users' test accuracy)", "",
             "| rule | attack | malicious | accuracy | vs honest-only (same rule) | within 1 point | stores usable |",
             "|---|---|---|---|---|---|---|"]
    for key, r in rows.items():
        rule, attack, k = key.split("/")
        extra = f" (vs fedavg today {100 * r['vs_today']:+.2f})" if "vs_today" in r else ""
        lines.append(f"| {rule} | {attack} | {k} | {100 * r['accuracy']:.2f} %{extra} | {100 * r['vs_honest']:+.2f} | "
                     f"{'PASS' if r['within_1_point'] else 'MISS'} | {r['stores_usable']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rounds", type=int, default=ROUNDS)
    p.add_argument("--rules", nargs="+", choices=("fedavg", "mean", "median", "trimmed"), default=["fedavg", "mean"],
                   help="fedavg: the honest fleet only, the unbounded mean as before (reference)")
    p.add_argument("--attack-fedavg", action="store_true",
                   help="attack the fedavg fleet too (the unbounded mean: what the attacks did before)")
    p.add_argument("--server-attack", type=Path, default=None, metavar="DIR",
                   help="instead: a hostile server against the devices a run left in DIR/work")
    p.add_argument("--merge", nargs="+", type=Path, default=None, metavar="DIR",
                   help="instead: merge the results.json of these runs into DIR/results.{json,md} of --out")
    p.add_argument("--attacks", nargs="+", choices=ATTACKS, default=list(ATTACKS))
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    start = time.perf_counter()
    if a.server_attack:
        res = server_attack(a.server_attack / "work")
        print(json.dumps(res))
        return res
    if a.merge:
        res, seeds = {}, []
        for d in a.merge:
            done = json.loads((d / "results.json").read_text())
            seeds += done["args"]["seeds"]
            for key, runs in done["runs"].items():
                res.setdefault(key, []).extend(runs)
        a.seeds, a.rounds = seeds, done["args"]["rounds"]
    else:
        res = run(a.out, a.seeds, a.rounds, a.rules, a.attacks, a.attack_fedavg)
    rows = summarise(res)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "results.json").write_text(json.dumps({"runs": res, "summary": rows, "seconds": time.perf_counter() - start,
                                                    "args": vars(a)}, indent=1, sort_keys=True, default=str))
    text = markdown(rows, a)
    (a.out / "results.md").write_text(text)
    print(text)
    return rows


if __name__ == "__main__":
    main()
