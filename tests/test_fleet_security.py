"""A fleet on a real network (edgelora.fleet.certs, guard, exposure): TLS, SuperNode authentication, the
operator alone submitting runs; refused without credentials off loopback."""
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr", reason="the fleet needs Flower: from the clone, pip install -e '.[fleet]' (or ./run test)")

from edgelora import load_adapter  # noqa: E402
from edgelora.cli import main  # noqa: E402
from edgelora.files.bundle import load_manifest  # noqa: E402
from edgelora.fleet import deploy, processes  # noqa: E402
from edgelora.fleet.settings import FleetSettings  # noqa: E402
from edgelora.ops.store import AdapterStore  # noqa: E402

from tests.fleet_helpers import BUNDLE  # noqa: E402

HOST = "127.0.0.1"


def test_certs_writes_a_fresh_folder_with_private_files_private_and_never_replaces_one(tmp_path):
    from edgelora.fleet.certs import make_credentials, read_token
    made = make_credentials(tmp_path / "creds", ["fleet.example", "10.0.0.5"], ["dev0", "dev1"])
    for key in ("ca_key", "server_key", "token", "node:dev0", "node:dev1"):
        assert stat.S_IMODE(os.stat(made[key]).st_mode) == 0o600, key
    from cryptography import x509
    cert = x509.load_pem_x509_certificate(Path(made["server"]).read_bytes())
    names = [str(n.value) for n in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value]
    assert {"fleet.example", "10.0.0.5", "127.0.0.1", "localhost"} <= set(names)
    assert Path(made["node:dev0.pub"]).read_text().startswith("ecdsa-sha2-nistp384 ")
    assert len(read_token(Path(made["token"]))) >= 32
    with pytest.raises(ValueError, match="new or empty folder"):
        make_credentials(tmp_path / "creds", ["x"], [])
    assert Path(made["ca"]).read_bytes().startswith(b"-----BEGIN CERTIFICATE")


def test_error_a_non_loopback_address_without_credentials_is_refused_naming_the_flags(capsys):
    from edgelora.fleet.exposure import check_exposure, is_loopback
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    with pytest.raises(ValueError, match="--ssl-ca-certfile, --ssl-certfile, --ssl-keyfile, --enable-supernode-auth"):
        check_exposure("link", "0.0.0.0", {}, insecure=False)
    assert "WARNING" in check_exposure("node", "10.1.2.3", {}, insecure=True)
    assert check_exposure("node", HOST, {}, insecure=False) is None          # loopback: as before
    assert main(["fleet", "link", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "not a loopback address" in err and "--operator-token" in err and len(err.strip().splitlines()) == 1
    assert main(["fleet", "node", str(BUNDLE), "--superlink", "10.1.2.3:9091"]) == 2
    assert "--root-certificates, --auth-supernode-private-key" in capsys.readouterr().err
    assert main(["fleet", "link", "--ssl-certfile", "x.pem"]) == 2
    assert "missing --ssl-ca-certfile, --ssl-keyfile" in capsys.readouterr().err


def test_guard_serves_devices_the_operator_and_this_machine_only():
    from edgelora.fleet.guard import decide
    token = "t" * 43
    ok = {b"authorization": f"Bearer {token}".encode()}
    assert decide("/v1/fleet/pull-messages", {}, "203.0.113.9", "10.0.0.5", token) is None
    assert decide("/health", {}, "203.0.113.9", "10.0.0.5", token) is None
    assert "this machine" in decide("/docs", {}, "203.0.113.9", "10.0.0.5", token)
    assert decide("/v1/control/start-run", ok, "203.0.113.9", "10.0.0.5", token) is None
    assert "operator" in decide("/v1/control/start-run", {}, "127.0.0.1", "127.0.0.1", token)
    assert "operator" in decide("/v1/control/register-node", {b"authorization": b"Bearer wrong"}, HOST, HOST, token)
    assert decide("/v1/runtime/pull-messages", {}, "127.0.0.1", "10.0.0.5", token) is None
    assert decide("/v1/runtime/pull-messages", {}, "10.0.0.5", "10.0.0.5", token) is None    # same machine
    assert "this machine" in decide("/v1/runtime/pull-messages", {}, "203.0.113.9", "10.0.0.5", token)


def _wait_for(path: Path, text: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and text in path.read_text(errors="replace"):
            return True
        time.sleep(0.5)
    return False


def test_tls_fleet_refuses_unregistered_nodes_and_outsiders_runs_and_completes_the_operators(tmp_path):
    """Loopback, TLS and SuperNode authentication: a device whose key was not registered, and one without a
    key, are refused; `flwr run` from an outsider's Flower home (holding the CA certificate, as any device
    does) is refused; the operator's run completes with the registered device only."""
    pytest.importorskip("sklearn", reason="the demo digits come from scikit-learn (test extra)")
    from edgelora.cli.demo_data import splits
    x, y = splits(0)["finetune"]
    creds = tmp_path / "creds"
    assert main(["fleet", "certs", str(creds), "--names", "localhost", "--nodes", "2"]) == 0
    port = processes.free_port()
    superlink = f"{HOST}:{port}"
    env = deploy.flwr_env(tmp_path / "flwr", HOST, port)
    procs = processes.Processes(tmp_path / "logs", env)
    cli = [sys.executable, "-m", "edgelora.cli", "fleet"]
    try:
        procs.start("link", cli + ["link", "--port", str(port), "--certs", str(creds), "--home", str(tmp_path / "lh")])
        processes.wait_for_port(HOST, port, 60)
        assert main(["fleet", "register", str(creds / "nodes" / "dev0.pub"), "--superlink", superlink,
                     "--certs", str(creds)]) == 0
        for i, key in enumerate([creds / "nodes" / "dev0.key", creds / "nodes" / "dev1.key", None]):
            np.savez(tmp_path / f"d{i}.npz", x=x[i::3], y=y[i::3])
            procs.start(f"node{i}", cli + ["node", str(BUNDLE), "--data", str(tmp_path / f"d{i}.npz"), "--workdir",
                                           str(tmp_path / f"w{i}"), "--superlink", superlink, "--port",
                                           str(processes.free_port()), "--max-wait", "15", "--root-certificates",
                                           str(creds / "ca.pem"), "--home", str(tmp_path / f"h{i}")]
                        + (["--auth-supernode-private-key", str(key)] if key else []))
        assert _wait_for(tmp_path / "logs" / "link.log", "No SuperNode found with the given public key", 90)
        outsider = deploy.flwr_env(tmp_path / "outsider", HOST, port, str(creds / "ca.pem"))
        app = deploy.write_app(tmp_path / "app", FleetSettings(bundle=str(BUNDLE), out=str(tmp_path / "stolen"),
                                                               num_rounds=1, min_clients=1))
        refused = subprocess.run(deploy.run_command(app), env=outsider, capture_output=True, text=True, timeout=120)
        assert refused.returncode != 0 and "operator's token" in refused.stdout + refused.stderr
        assert main(["fleet", "run", str(BUNDLE), "--out", str(tmp_path / "shared"), "--superlink", superlink,
                     "--certs", str(creds), "--rounds", "1", "--min-clients", "1", "--local-epochs", "1",
                     "--home", str(tmp_path / "op")]) == 0
    finally:
        procs.stop(10)
    log = json.loads((tmp_path / "shared.rounds.json").read_text())
    assert len(log["rounds"][0]["nodes"]) == 1 and log["rounds"][0]["accepted"] == 1   # the registered device only
    assert load_adapter(tmp_path / "shared", load_manifest(BUNDLE)).config.training["fleet"]["round"] == 1
    assert not (tmp_path / "stolen").exists()
    stores = [AdapterStore(tmp_path / f"w{i}" / "store") for i in range(3)]
    assert stores[0].exists("fleet") and not stores[1].exists("fleet") and not stores[2].exists("fleet")
