"""A fleet on Flower's deployment runtime: the app folder, the environment and the command lines.

Flower's deployment is three kinds of process: one SuperLink (the server's endpoint; it starts the
ServerApp when a run is submitted), one SuperNode per device (it starts the ClientApp for each message),
and `flwr run`, which submits the app to the SuperLink. Every command here binds to or dials the given
host (127.0.0.1 by default), disables Flower's telemetry, update check and run-time dependency
installation (no network beyond the fleet), and keeps Flower's files under a private FLWR_HOME.
Starting, supervising and stopping the processes is edgelora.fleet.processes.
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

from .settings import FleetSettings

PUBLISHER = "edgelora"
APP_NAME = "edgelora-fleet"
CONNECTION = "fleet"     # the SuperLink connection name in FLWR_HOME/config.toml


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"TOML value: expected a finite number, found {value}")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)   # a JSON string is a valid TOML basic string
    raise TypeError(f"TOML value: expected bool, int, float or str, found {type(value).__name__}")


def toml_table(values: dict) -> str:
    return "".join(f"{key} = {_toml_value(v)}\n" for key, v in values.items())


def write_app(folder: Path, settings: FleetSettings, clientapp: str = "edgelora.fleet.client_app:app") -> Path:
    """The Flower app folder `flwr run` submits: a pyproject.toml naming the apps (edgelora's ServerApp, the
    ClientApp `clientapp`, edgelora's by default) and the run config."""
    folder.mkdir(parents=True, exist_ok=True)
    from .. import __version__
    text = (f'[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n\n'
            f'[project]\nname = "{APP_NAME}"\nversion = "{__version__}"\ndependencies = []\n\n'
            f'[tool.flwr.app]\npublisher = "{PUBLISHER}"\n\n'
            f'[tool.flwr.app.components]\nserverapp = "edgelora.fleet.server_app:app"\n'
            f'clientapp = "{clientapp}"\n\n'
            f'[tool.flwr.app.config]\n' + toml_table(settings.to_run_config()))
    (folder / "pyproject.toml").write_text(text)
    return folder


def flwr_env(home: Path, host: str, port: int, root_certificates: str | None = None) -> dict:
    """Environment for every Flower process of the fleet; writes FLWR_HOME/config.toml (the connection:
    TLS verified against `root_certificates` when given, else plain HTTP)."""
    home.mkdir(parents=True, exist_ok=True)
    tls = (f'insecure = false\nroot-certificates = {_toml_value(str(Path(root_certificates).resolve()))}\n'
           if root_certificates else "insecure = true\n")
    (home / "config.toml").write_text(f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
                                      f'address = "{host}:{port}"\n' + tls)
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])  # Flower's helpers
    return {**os.environ, "PATH": path, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "PYTHONUNBUFFERED": "1"}


def _tool(name: str) -> str:
    """Flower's console script installed beside this Python (the fleet extra)."""
    path = Path(sys.executable).parent / name
    if not path.is_file():
        raise FileNotFoundError(f"{name} not found beside {sys.executable}; install the fleet extra: "
                                f"from the edgelora clone, pip install -e '.[fleet]'")
    return str(path)


def superlink_command(host: str, port: int, tls: tuple[str, str, str] | None = None, supernode_auth: bool = False,
                      operator_token: str | None = None) -> list[str]:
    """One HTTP port serves Flower's Fleet, Control and Runtime APIs (flwr 1.42). `tls` = (CA certificate,
    server certificate, server key); `supernode_auth`: only registered SuperNodes may connect;
    `operator_token` (a file): the Control API is the operator's alone (edgelora.fleet.guard)."""
    start = ([sys.executable, "-m", "edgelora.fleet.guard", "--operator-token", str(operator_token)]
             if operator_token else [_tool("flower-superlink")])
    security = (["--ssl-ca-certfile", tls[0], "--ssl-certfile", tls[1], "--ssl-keyfile", tls[2]] if tls
                else ["--insecure"])
    return (start + security + (["--enable-supernode-auth"] if supernode_auth else []) +
            ["--host", host, "--port", str(port), "--disable-runtime-dependency-installation"])


def supernode_command(superlink: str, port: int, node_config: Path, max_wait: float, host: str = "127.0.0.1",
                      root_certificates: str | None = None, private_key: str | None = None) -> list[str]:
    """A device: reconnects to the SuperLink for at most `max_wait` seconds, then exits by itself. With
    `root_certificates` it speaks TLS and checks the SuperLink's certificate against them; with
    `private_key` it authenticates itself (its public key registered by the operator)."""
    security = ["--root-certificates", root_certificates] if root_certificates else ["--insecure"]
    if private_key:
        security += ["--auth-supernode-private-key", private_key]
    return [_tool("flower-supernode"), *security, "--superlink", superlink, "--host", host, "--port", str(port),
            "--node-config", str(node_config), "--max-wait-time", f"{max_wait:g}"]


def write_node_config(path: Path, bundle: str, data: str, workdir: str, x_key: str = "x", y_key: str = "y",
                      max_shared_norm: float = 1e3) -> Path:
    """A device's node config as a TOML file (`--node-config FILE.toml`)."""
    values = {"bundle": str(Path(bundle).resolve()), "data": str(Path(data).resolve()),
              "workdir": str(Path(workdir).resolve()), "x-key": x_key, "y-key": y_key,
              "max-shared-norm": float(max_shared_norm)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(toml_table(values))
    return path


def run_command(app: Path) -> list[str]:
    return [_tool("flwr"), "run", str(app), CONNECTION, "--stream"]


def register_command(public_key: Path) -> list[str]:
    """The operator registers a SuperNode's public key (needed with --enable-supernode-auth)."""
    return [_tool("flwr"), "supernode", "register", str(public_key), CONNECTION]
