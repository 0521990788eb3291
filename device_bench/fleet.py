"""A real fleet deployment on loopback (127.0.0.1 only): SuperLink + SuperNodes as separate processes.

    python -m device_bench.fleet [--devices 4] [--rounds 5] [--kill-round 2] [--out bench_out/fleet]

Devices are har test users (each its fine-tune half), plus one faulty device whose updates carry another
backbone's fingerprint (the app's ClientApp is device_bench.faulty_client: edgelora's, plus that fault).
In round `--kill-round`, as soon as device 1 has received its training message, its SuperNode (and the ClientApp it started) is killed with SIGKILL; the round must complete with the
others (min-clients = devices - 1). When that round is over, device 1 is restarted with the same files;
it must serve the last shared adapter it had and train from the latest one the server sends. After the
run the SuperLink is stopped with SIGTERM and the SuperNodes must exit by themselves (--max-wait-time).
Every wait is bounded; anything still running at the end is killed and counted. Writes DIR/results.json.
"""
from __future__ import annotations

import os

from .profile import THREADS_ENV

os.environ.update(THREADS_ENV)

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from edgelora import Backbone, Predictor  # noqa: E402
from edgelora.fleet import deploy, processes  # noqa: E402
from edgelora.fleet.device import RoundSettings  # noqa: E402
from edgelora.fleet.settings import FleetSettings  # noqa: E402
from edgelora.fleet.update import flat_sha256  # noqa: E402
from edgelora.ops.store import AdapterStore  # noqa: E402

from . import faulty_client, protocols  # noqa: E402
from .backbones import REPO, reference_bundle  # noqa: E402

OUT = REPO / "bench_out" / "fleet"
HOST = "127.0.0.1"
ROUND_TIMEOUT = 60.0     # a round waits this long for replies (a killed device's never comes)
NODE_MAX_WAIT = 20.0     # a SuperNode gives up reconnecting after this many seconds
RUN_TIMEOUT = 900.0      # the whole run, hard limit


def count(path: Path, text: str) -> int:
    try:
        return path.read_text(errors="replace").count(text)
    except OSError:
        return 0


def wait_until(predicate, timeout: float, what: str, step: float = 0.2) -> float:
    """Seconds until predicate() is true; TimeoutError naming `what` after `timeout` seconds."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        time.sleep(step)
    return time.monotonic() - start


def device_command(root: Path, bundle: Path, i: int, port: int) -> list[str]:
    """A device as its owner starts it: `edgelora fleet node` (it supervises Flower's SuperNode)."""
    return [sys.executable, "-m", "edgelora.cli", "fleet", "node", str(bundle), "--data", str(root / f"device{i}.npz"),
            "--workdir", str(root / f"device{i}"), "--superlink", f"{HOST}:{port}", "--port",
            str(processes.free_port(HOST)), "--max-wait", f"{NODE_MAX_WAIT:g}", "--home", str(root / "flwr_home")]


def faulty_device_command(root: Path, bundle: Path, i: int, port: int) -> list[str]:
    """The faulty device: as `edgelora fleet node` starts a SuperNode, with `fault = "fingerprint"` in its node
    config (read by device_bench.faulty_client)."""
    cfg = deploy.write_node_config(root / f"device{i}" / "node_config.toml", str(bundle), str(root / f"device{i}.npz"),
                                   str(root / f"device{i}"))
    cfg.write_text(cfg.read_text() + deploy.toml_table({"fault": "fingerprint"}))
    node = deploy.supernode_command(f"{HOST}:{port}", processes.free_port(HOST), cfg, NODE_MAX_WAIT)
    code = ("import os, sys; from edgelora.fleet.processes import supervise; "
            "sys.exit(supervise(sys.argv[1:], dict(os.environ)))")
    return [sys.executable, "-c", code] + node


def run(out: Path = OUT, devices: int = 4, rounds: int = 5, kill_round: int = 2, log=print) -> dict:
    data = protocols.har()
    bundle = reference_bundle("har", data, REPO / "bench_out" / "bundles")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    users = list(data["users"])[:devices + 1]          # the last one is the faulty device
    for i, u in enumerate(users):
        np.savez(out / f"device{i}.npz", x=data["users"][u]["finetune"][0], y=data["users"][u]["finetune"][1])
    port = processes.free_port(HOST)
    env = deploy.flwr_env(out / "flwr_home", HOST, port)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)  # for faulty_client
    procs = processes.Processes(out / "logs", env)
    settings = FleetSettings(bundle=str(bundle), out=str(out / "shared"), num_rounds=rounds, min_clients=devices - 1,
                             round_timeout=ROUND_TIMEOUT, node_wait=120.0, round=RoundSettings(local_epochs=2))
    app = deploy.write_app(out / "app", settings, clientapp=faulty_client.APP)
    res = {"devices": devices, "faulty_devices": 1, "rounds": rounds, "kill_round": kill_round, "host": HOST}
    t0 = time.monotonic()
    node_log = lambda i: out / "logs" / f"device{i}.log"   # noqa: E731
    try:
        procs.start("superlink", [sys.executable, "-m", "edgelora.cli", "fleet", "link", "--host", HOST, "--port",
                                  str(port), "--home", str(out / "flwr_home")])
        processes.wait_for_port(HOST, port, 60)
        for i in range(len(users)):
            procs.start(f"device{i}", (faulty_device_command if i == devices else device_command)(out, bundle, i, port))
        runner = procs.start("flwr-run", deploy.run_command(app))
        rounds_log = out / "shared.rounds.json"
        done = lambda k: rounds_log.is_file() and len(json.loads(rounds_log.read_text())["rounds"]) >= k  # noqa: E731
        wait_until(lambda: done(kill_round - 1), RUN_TIMEOUT, f"round {kill_round - 1}")
        wait_until(lambda: count(node_log(1), "Receiving: train message") >= kill_round, 120,
                   f"device 1 receiving round {kill_round}")
        procs.kill("device1")                          # SIGKILL the SuperNode's process group, mid-round
        res["killed_at_s"] = time.monotonic() - t0
        log(f"  killed device 1 (SIGKILL) in round {kill_round} at {res['killed_at_s']:.1f} s")
        served_before = AdapterStore(out / "device1" / "store").load("fleet")
        res["kill_round_s"] = wait_until(lambda: done(kill_round), ROUND_TIMEOUT + 60, f"round {kill_round}")
        procs.procs["device1"].wait(10)
        restarted = procs.start("device1-restarted", device_command(out, bundle, 1, port))
        log(f"  round {kill_round} completed {res['kill_round_s']:.1f} s after the kill; device 1 restarted")
        res["restarted_serves_round"] = AdapterStore(out / "device1" / "store").info(
            "fleet", AdapterStore(out / "device1" / "store").current("fleet")).extra.get("round")
        res["restarted_serves_same"] = bool(np.array_equal(
            AdapterStore(out / "device1" / "store").load("fleet").flat, served_before.flat))
        runner.wait(RUN_TIMEOUT - (time.monotonic() - t0))
        res["run_exit_code"] = runner.returncode
        res["run_seconds"] = time.monotonic() - t0
        procs.kill("superlink", 15)                    # SIGTERM: the server side ends
        nodes = [p for n, p in procs.procs.items() if n.startswith("device") and n != "device1"]
        stopped = time.monotonic()
        try:
            wait_until(lambda: all(p.poll() is not None for p in nodes), NODE_MAX_WAIT + 60,
                       "SuperNodes exiting by themselves")
            res["nodes_exit_s"] = time.monotonic() - stopped
        except TimeoutError:
            res["nodes_exit_s"] = None
        log_ = json.loads(rounds_log.read_text())
        res["rounds_log"] = log_["rounds"]
        last_sent = log_["rounds"][-1]["sent_sha256"]
        store = AdapterStore(out / "device1" / "store")
        res["restarted_latest_sha_matches_last_round"] = flat_sha256(store.load("fleet").flat) == last_sent
        res["restarted_accepted_after"] = [r["round"] for r in log_["rounds"] if r["round"] > kill_round
                                           and any(n not in _nodes_before(log_, kill_round) for n in r["nodes"])]
        res["restarted_pid"] = restarted.pid
    finally:
        codes = procs.stop(10)
        res["exit_codes"] = codes
        res["leftover_processes_killed"] = procs.leftovers
        res["leftover_commands"] = getattr(procs, "leftover_commands", [])
    backbone = Backbone(bundle)
    shared = __import__("edgelora").load_adapter(out / "shared", backbone.manifest)
    res["accuracy"] = {u: {"none": Predictor(backbone).evaluate(*data["users"][u]["test"])["accuracy"],
                           "shared": Predictor(backbone, shared).evaluate(*data["users"][u]["test"])["accuracy"]}
                       for u in users[:devices]}
    (out / "results.json").write_text(json.dumps(res, indent=1, sort_keys=True, default=float))
    return res


def _nodes_before(log_: dict, kill_round: int) -> set[int]:
    return {n for r in log_["rounds"] if r["round"] < kill_round for n in r["nodes"]}


def report(res: dict) -> str:
    rl = res["rounds_log"]
    lines = [f"loopback fleet: {res['devices']} devices + {res['faulty_devices']} faulty, {res['rounds']} rounds, "
             f"SIGKILL of device 1 in round {res['kill_round']}",
             "round  accepted  rejected  seconds  reply bytes (max)  update bytes"]
    for r in rl:
        lines.append(f"{r['round']:5d}  {r['accepted']:8d}  {len(r['rejected']):8d}  {r['seconds']:7.1f}  "
                     f"{max(r['reply_bytes'] or [0]):17d}  {max(r['update_bytes'] or [0]):12d}")
    reasons = sorted({x['reason'] for r in rl for x in r['rejected']})
    lines += [f"rejected because: {reasons}",
              f"round {res['kill_round']} completed {res['kill_round_s']:.1f} s after the kill; restarted device "
              f"served the shared adapter of round {res['restarted_serves_round']} (unchanged by the kill: "
              f"{res['restarted_serves_same']}); its updates accepted in rounds {res['restarted_accepted_after']}; "
              f"it holds the last round's shared adapter: {res['restarted_latest_sha_matches_last_round']}",
              f"flwr run exit {res['run_exit_code']} after {res['run_seconds']:.1f} s; SuperNodes exited by "
              f"themselves {res['nodes_exit_s']} s after the SuperLink stopped; leftover processes killed: "
              f"{res['leftover_processes_killed']} {res['leftover_commands']}; exit codes {res['exit_codes']}"]
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=4)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--kill-round", type=int, default=2)
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    if a.devices < 4 or not 2 <= a.kill_round < a.rounds:
        p.error("need --devices >= 4 and 2 <= --kill-round < --rounds")
    res = run(a.out, a.devices, a.rounds, a.kill_round)
    print(report(res))
    return res


if __name__ == "__main__":
    main()
