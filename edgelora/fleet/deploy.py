"""A fleet on Flower's deployment runtime: the app folder, the command lines, bounded process handling.

Flower's deployment is three kinds of process: one SuperLink (the server's endpoint; it starts the
ServerApp when a run is submitted), one SuperNode per device (it starts the ClientApp for each message),
and `flwr run`, which submits the app to the SuperLink. Every command here binds to or dials the given
host (127.0.0.1 by default), disables Flower's telemetry, update check and run-time dependency
installation (no network beyond the fleet), and keeps Flower's files under a private FLWR_HOME.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
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


def write_app(folder: Path, settings: FleetSettings) -> Path:
    """The Flower app folder `flwr run` submits: a pyproject.toml naming edgelora's apps and the run config."""
    folder.mkdir(parents=True, exist_ok=True)
    from .. import __version__
    text = (f'[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n\n'
            f'[project]\nname = "{APP_NAME}"\nversion = "{__version__}"\ndependencies = []\n\n'
            f'[tool.flwr.app]\npublisher = "{PUBLISHER}"\n\n'
            f'[tool.flwr.app.components]\nserverapp = "edgelora.fleet.server_app:app"\n'
            f'clientapp = "edgelora.fleet.client_app:app"\n\n'
            f'[tool.flwr.app.config]\n' + toml_table(settings.to_run_config()))
    (folder / "pyproject.toml").write_text(text)
    return folder


def flwr_env(home: Path, host: str, port: int) -> dict:
    """Environment for every Flower process of the fleet; writes FLWR_HOME/config.toml (the connection)."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
                                      f'address = "{host}:{port}"\ninsecure = true\n')
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


def superlink_command(host: str, port: int) -> list[str]:
    """One HTTP port serves Flower's Fleet, Control and Runtime APIs (flwr 1.42)."""
    return [_tool("flower-superlink"), "--insecure", "--host", host, "--port", str(port),
            "--disable-runtime-dependency-installation"]


def supernode_command(superlink: str, port: int, node_config: Path, max_wait: float,
                      host: str = "127.0.0.1") -> list[str]:
    """A device: reconnects to the SuperLink for at most `max_wait` seconds, then exits by itself."""
    return [_tool("flower-supernode"), "--insecure", "--superlink", superlink, "--host", host, "--port", str(port),
            "--node-config", str(node_config), "--max-wait-time", f"{max_wait:g}"]


def write_node_config(path: Path, bundle: str, data: str, workdir: str, x_key: str = "x", y_key: str = "y",
                      fault: str = "") -> Path:
    """A device's node config as a TOML file (`--node-config FILE.toml`)."""
    values = {"bundle": str(Path(bundle).resolve()), "data": str(Path(data).resolve()),
              "workdir": str(Path(workdir).resolve()), "x-key": x_key, "y-key": y_key}
    if fault:
        values["fault"] = fault
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(toml_table(values))
    return path


def run_command(app: Path) -> list[str]:
    return [_tool("flwr"), "run", str(app), CONNECTION, "--stream"]


def _become_subreaper() -> bool:
    """Linux: orphans of our process tree (Flower detaches helper processes) become our children, so we can
    reap them instead of leaving zombies under an init that may not reap."""
    try:
        import ctypes
        return ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0   # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def _adopted_children() -> list[int]:
    """PIDs whose parent is this process (started here, or orphans of them adopted as subreaper)."""
    me, out = os.getpid(), []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2:].split()[1]) == me:
            out.append(int(entry.name))
    return out


class Processes:
    """Processes started in their own session, each with a log file; `stop` ends every one it started
    and every descendant Flower detached from them (this process is their subreaper)."""

    def __init__(self, logs: Path, env: dict):
        self.logs, self.env, self.procs = logs, env, {}
        logs.mkdir(parents=True, exist_ok=True)
        self.subreaper = _become_subreaper()

    def start(self, name: str, command: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        log.close()
        self.procs[name] = proc
        return proc

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal the process group of `name` (the process and the children Flower started for it)."""
        proc = self.procs[name]
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, grace: float = 10.0) -> dict[str, int | None]:
        """SIGTERM every group still running, SIGKILL after `grace` seconds; returns exit codes."""
        for name, proc in self.procs.items():
            if proc.poll() is None:
                self.kill(name, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for name, proc in self.procs.items():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill(name, signal.SIGKILL)
                proc.wait(5)
        for name in self.procs:   # children Flower left in a group whose leader exited
            self.kill(name, signal.SIGKILL)
        self.leftovers = self.reap(grace)
        return {name: proc.returncode for name, proc in self.procs.items()}

    def reap(self, grace: float) -> int:
        """End and reap adopted descendants (SIGTERM, then SIGKILL); returns how many were still running."""
        if not self.subreaper:
            return 0
        mine = {p.pid for p in self.procs.values()}
        running = [pid for pid in _adopted_children() if pid not in mine and not _is_zombie(pid)]
        for pid in running:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(not _is_zombie(p) for p in running):
            time.sleep(0.1)
        for pid in running:
            _signal(pid, signal.SIGKILL)
        for pid in _adopted_children():
            if pid not in mine:
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass
        return len(running)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True   # gone
    return stat[stat.rindex(")") + 2] in "ZX"


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def wait_for_port(host: str, port: int, timeout: float) -> None:
    """Return once something listens on host:port; TimeoutError after `timeout` seconds."""
    import socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:g} s")


def free_port(host: str = "127.0.0.1") -> int:
    import socket
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
