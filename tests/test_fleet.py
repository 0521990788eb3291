"""Fleets (edgelora.fleet): update checks, aggregation, the Flower apps in process and on loopback processes."""
import json
from dataclasses import replace
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr", reason="the fleet needs Flower: from the clone, pip install -e '.[fleet]' (or ./run test)")

from edgelora import Backbone, Predictor, load_adapter  # noqa: E402
from edgelora.cli import main  # noqa: E402
from edgelora.fleet import deploy, processes  # noqa: E402
from edgelora.fleet.aggregate import ServerOptimizer, weighted_mean  # noqa: E402
from edgelora.fleet.client_app import app as client_app  # noqa: E402
from edgelora.fleet.device import FleetDevice, RoundSettings  # noqa: E402
from edgelora.fleet.local_grid import LocalGrid  # noqa: E402
from edgelora.fleet.personal import adopt_shared, personalize_on_shared  # noqa: E402
from edgelora.fleet.server_app import run_fleet  # noqa: E402
from edgelora.fleet.settings import FleetSettings  # noqa: E402
from edgelora.fleet.update import (adapter_from, check_update, encode_update, flat_sha256,  # noqa: E402
                                   initial_adapter)
from edgelora.ops.store import AdapterStore  # noqa: E402
from device_bench import faulty_client  # noqa: E402

from tests.fleet_helpers import BUNDLE, MANIFEST, SPEC, device_nodes  # noqa: E402


def fleet(tmp_path, demo, name, faults=(), rounds=2):
    root = tmp_path / name
    root.mkdir()
    settings = FleetSettings(bundle=str(BUNDLE), out=str(root / "shared"), num_rounds=rounds, min_clients=4,
                             round=RoundSettings(local_epochs=5))
    app = faulty_client.app if faults else client_app
    return root, run_fleet(LocalGrid(app, device_nodes(root, demo, faults=faults)), settings)


def test_check_update_accepts_a_good_update_and_names_what_is_wrong_otherwise():
    u = encode_update(np.ones(SPEC.size, np.float32), np.zeros(SPEC.size, np.float32))
    meta = {"fingerprint": SPEC.fingerprint, "round": 3}
    assert u.dtype == np.float16 and check_update(u, meta, SPEC, 3, 40, 1000, 1e3) is None
    bad_nan = u.copy()
    bad_nan[5] = np.nan
    cases = {"non-finite": (bad_nan, meta, 40), "shape": (u[:-1], meta, 40),
             "dtype": (u.astype(np.float64), meta, 40), "fingerprint": (u, {**meta, "fingerprint": "sha256:" + "0" * 64}, 40),
             "stale": (u, {**meta, "round": 2}, 40), "num-examples": (u, meta, 0), "norm": (u * 1000, meta, 40)}
    for word, (upd, m, n) in cases.items():
        assert word in check_update(upd, m, SPEC, 3, n, 1000, 1e3), word
    assert "num-examples" in check_update(u, meta, SPEC, 3, True, 1000, 1e3)      # a bool is not a count
    assert "num-examples" in check_update(u, meta, SPEC, 3, 10**9, 1000, 1e3)     # weight poisoning


def test_fedavg_is_the_sample_weighted_mean_of_local_models_and_momentum_accumulates():
    rng = np.random.default_rng(0)
    shared = rng.standard_normal(6).astype(np.float32)
    local = [rng.standard_normal(6).astype(np.float32) for _ in range(3)]
    n = [10, 30, 60]
    mean = weighted_mean([encode_update(a, shared, "float32") for a in local], n)
    expected = sum(w * a.astype(np.float64) for w, a in zip(n, local)) / 100
    np.testing.assert_allclose(ServerOptimizer("fedavg").step(shared, mean), expected, atol=1e-6)
    opt = ServerOptimizer("fedavgm", momentum=0.5)
    first = opt.step(shared, mean)
    second = opt.step(first, mean)   # velocity = 0.5 * mean + mean
    np.testing.assert_allclose(second - first, 1.5 * mean, atol=1e-6)


def test_settings_round_trip_and_refuse_unknown_or_mistyped_keys():
    s = FleetSettings(bundle="b", out="o", num_rounds=3, strategy="fedavgm", round=RoundSettings(local_epochs=4))
    assert FleetSettings.from_run_config(s.to_run_config()) == s
    with pytest.raises(ValueError, match="unknown key"):
        FleetSettings.from_run_config({**s.to_run_config(), "num-round": 3})
    with pytest.raises(TypeError, match="num-rounds"):
        FleetSettings.from_run_config({**s.to_run_config(), "num-rounds": "3"})
    with pytest.raises(ValueError, match="strategy"):
        FleetSettings(bundle="b", out="o", strategy="fedsgd")


def test_local_fleet_learns_and_saves_an_ordinary_adapter(tmp_path, demo):
    root, log = fleet(tmp_path, demo, "plain")
    assert [r["accepted"] for r in log["rounds"]] == [4, 4] and all(r["changed"] for r in log["rounds"])
    backbone = Backbone(BUNDLE)
    shared = load_adapter(root / "shared", backbone.manifest)          # checks fingerprint and checksums
    assert shared.config.training["fleet"]["round"] == 2
    before = Predictor(backbone).evaluate(*demo["test"])["accuracy"]
    assert Predictor(backbone, shared).evaluate(*demo["test"])["accuracy"] > before + 0.03
    assert max(max(r["update_bytes"]) for r in log["rounds"]) < 0.6 * 4 * SPEC.size   # float16 on the wire
    assert json.loads((root / "shared.rounds.json").read_text())["rounds"][-1]["round"] == 2


def test_malformed_updates_are_rejected_with_a_reason_and_never_reach_the_aggregate(tmp_path, demo):
    _, clean = fleet(tmp_path, demo, "clean")
    root, log = fleet(tmp_path, demo, "faulty", faults=("nan", "shape", "fingerprint"))
    for r in log["rounds"]:
        assert r["accepted"] == 4
        reasons = " | ".join(x["reason"] for x in r["rejected"])
        assert "non-finite" in reasons and "shape" in reasons and "fingerprint" in reasons
    # the faulty devices hold copies of good devices' data: had any update leaked in, the result would differ
    assert [r["sent_sha256"] for r in log["rounds"]] == [r["sent_sha256"] for r in clean["rounds"]]
    faulty = load_adapter(root / "shared", MANIFEST).flat
    np.testing.assert_array_equal(faulty, load_adapter(tmp_path / "clean" / "shared", MANIFEST).flat)


def test_a_device_error_or_silence_does_not_stall_the_round(tmp_path, demo):
    root = tmp_path / "lost"
    root.mkdir()
    nodes = device_nodes(root, demo)
    nodes[0]["data"] = str(root / "missing.npz")                      # its ClientApp raises: an error reply
    settings = FleetSettings(bundle=str(BUNDLE), out=str(root / "shared"), num_rounds=2, min_clients=2,
                             round=RoundSettings(local_epochs=2))
    log = run_fleet(LocalGrid(client_app, nodes, offline=[LocalGrid.FIRST_NODE + 1]), settings)
    assert [r["accepted"] for r in log["rounds"]] == [2, 2]
    assert "data file not found" in log["rounds"][0]["rejected"][0]["reason"]
    too_few = FleetSettings(bundle=str(BUNDLE), out=str(root / "shared2"), num_rounds=1, min_clients=3,
                            round=RoundSettings(local_epochs=2))
    log = run_fleet(LocalGrid(client_app, nodes, offline=[LocalGrid.FIRST_NODE + 1]), too_few)
    assert log["rounds"][0]["changed"] is False and not (root / "shared2").exists()


def test_a_restarted_device_serves_the_last_shared_adapter_it_received(tmp_path, demo):
    x, y = demo["finetune"]
    device = FleetDevice(BUNDLE, x[:100], y[:100], tmp_path / "dev")
    assert device.latest_shared() is None
    first = initial_adapter(MANIFEST, SPEC)
    device.receive(SPEC, first.flat, 1)
    update, n, _ = device.train(first, RoundSettings(local_epochs=2), 1)
    second = first.flat + update.astype(np.float32)
    device.receive(SPEC, second, 2)
    again = FleetDevice(BUNDLE, x[:100], y[:100], tmp_path / "dev")           # the process restarted
    assert flat_sha256(again.latest_shared().flat) == flat_sha256(second)
    assert again.cache.misses == 0 and len(again.cache) == 100                # its Skip-Cache survived too
    with pytest.raises(ValueError, match="another|backbone"):
        device.receive(replace(SPEC, fingerprint="sha256:" + "1" * 64), first.flat, 3)


def test_personal_on_shared_goes_through_the_gate_and_adopts_a_new_shared_adapter(tmp_path, demo):
    backbone = Backbone(BUNDLE)
    x, y = demo["finetune"]
    root, _ = fleet(tmp_path, demo, "for-personal")
    shared = load_adapter(root / "shared", backbone.manifest)
    store = AdapterStore(tmp_path / "store")
    r = personalize_on_shared(store, "me", backbone, shared, x[:200], y[:200])
    assert r.decision in ("published", "rejected") and r.previous == 1       # gated against the shared version
    assert store.info("me", 1).reason == "the fleet's shared adapter"
    served = store.current("me")
    assert adopt_shared(store, "me", shared) == served                        # same shared: nothing changes
    newer = adapter_from(SPEC, MANIFEST, shared.flat * 0.5)
    assert adopt_shared(store, "me", newer) == served + (2 if r.decision == "rejected" else 1)


def test_cli_fleet_refuses_bad_input_with_one_line(tmp_path, capsys):
    assert main(["fleet", "node", str(BUNDLE)]) == 2
    assert "needs --data, --workdir" in capsys.readouterr().err
    assert main(["fleet", "node", str(BUNDLE), "--data", str(tmp_path / "none.npz"), "--workdir",
                 str(tmp_path / "w"), "--max-wait", "1"]) == 2        # refused before any SuperNode starts
    assert "data file not found" in capsys.readouterr().err
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    assert main(["fleet", "run", str(BUNDLE), "--out", str(tmp_path / "notes")]) == 2
    assert "not an adapter folder" in capsys.readouterr().err
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


def test_supervise_ends_a_hung_supernode_and_the_helpers_it_detached(tmp_path):
    """flwr 1.42's SuperNode can hang after giving up; its detached helpers outlive it. Neither may stay."""
    probe = "import sys; from edgelora.fleet.processes import _become_subreaper as b; sys.exit(0 if b() else 1)"
    if subprocess.run([sys.executable, "-c", probe]).returncode != 0:
        # measured: qemu-user answers prctl(PR_SET_CHILD_SUBREAPER) with EINVAL, so detached helpers cannot be
        # adopted under emulation; a real Linux kernel (x86_64 or aarch64) supports it
        pytest.skip("this kernel (or emulator: qemu-user) cannot make a process a child subreaper, which is "
                    "how supervise() adopts and ends Flower's detached helpers")
    fake = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; "
            "time.sleep(120)'], start_new_session=True); print('helper', p.pid, flush=True); "
            "print('Giving up reconnection after 1 s', flush=True); time.sleep(120)")
    runner = ("import os, sys; from edgelora.fleet.processes import supervise; "
              f"print('CODE', supervise([sys.executable, '-c', {fake!r}], dict(os.environ), grace=1.0))")
    done = subprocess.run([sys.executable, "-c", runner], capture_output=True, text=True, timeout=60)
    assert "CODE -15" in done.stdout, done.stdout + done.stderr     # terminated after the grace
    helper = int(done.stdout.split("helper ")[1].split()[0])
    assert not Path(f"/proc/{helper}").exists() or " Z" in Path(f"/proc/{helper}/stat").read_text()


def test_import_edgelora_does_not_import_flower():
    code = "import sys, edgelora; sys.exit('flwr' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_loopback_deployment_superlink_and_four_supernodes(tmp_path, demo):
    """The deployment runtime as separate processes on 127.0.0.1: 4 devices, 2 rounds, all processes end."""
    nodes = device_nodes(tmp_path, demo)
    before = set(processes._adopted_children())
    port = processes.free_port()
    env = deploy.flwr_env(tmp_path / "home", "127.0.0.1", port)
    procs = processes.Processes(tmp_path / "logs", env)
    settings = FleetSettings(bundle=str(BUNDLE), out=str(tmp_path / "shared"), num_rounds=2, min_clients=4,
                             round_timeout=120, node_wait=120, round=RoundSettings(local_epochs=2))
    try:
        procs.start("superlink", deploy.superlink_command("127.0.0.1", port))
        processes.wait_for_port("127.0.0.1", port, 60)
        for i, n in enumerate(nodes):
            cfg = deploy.write_node_config(tmp_path / f"n{i}.toml", n["bundle"], n["data"], n["workdir"])
            procs.start(f"node{i}", deploy.supernode_command(f"127.0.0.1:{port}", processes.free_port(), cfg, 30))
        done = subprocess.run(deploy.run_command(deploy.write_app(tmp_path / "app", settings)), env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    finally:
        procs.stop(10)
    assert all(p.poll() is not None for p in procs.procs.values())
    alive = [pid for pid in processes._adopted_children() if pid not in before and not processes._is_zombie(pid)]
    assert alive == []                         # Flower's detached helpers were adopted and ended too
    log = json.loads((tmp_path / "shared.rounds.json").read_text())
    assert [r["accepted"] for r in log["rounds"]] == [4, 4]
    assert load_adapter(tmp_path / "shared", MANIFEST).config.training["fleet"]["round"] == 2
