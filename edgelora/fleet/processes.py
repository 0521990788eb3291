"""Starting, supervising and stopping a fleet's processes, with every wait bounded and nothing left behind.

Flower's SuperLink and SuperNode start helper processes detached from their own process group
(flower-superexec, then a flwr-serverapp or flwr-clientapp per run or message). Killing the server process
does not end them, and they may outlive it. So whoever starts Flower processes here becomes a Linux
child subreaper: those orphans are re-parented to it, and it ends and reaps them when it stops.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def _become_subreaper(on: bool = True) -> bool:
    """Linux: orphans of our process tree (Flower detaches helper processes) become our children, so we can
    reap them instead of leaving zombies under an init that may not reap. `on=False` gives that up."""
    try:
        import ctypes
        return ctypes.CDLL(None, use_errno=True).prctl(36, int(on), 0, 0, 0) == 0   # PR_SET_CHILD_SUBREAPER
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
        self.leftovers, self.leftover_commands = 0, []

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
        if self.subreaper:
            _become_subreaper(False)   # a long-lived caller (a test session) gets its usual orphan handling back
        return {name: proc.returncode for name, proc in self.procs.items()}

    def reap(self, grace: float) -> int:
        """End and reap adopted descendants; returns how many were still running."""
        if not self.subreaper:
            return 0
        self.leftover_commands = end_adopted(grace, exclude={p.pid for p in self.procs.values()})
        return len(self.leftover_commands)


def end_adopted(grace: float, exclude: set[int]) -> list[str]:
    """SIGTERM, then after `grace` s SIGKILL, every child of ours not in `exclude` (orphans adopted as
    subreaper), and reap them all; returns the command lines of those that were still running."""
    running = [pid for pid in _adopted_children() if pid not in exclude and not _is_zombie(pid)]
    commands = [_cmdline(pid) for pid in running]
    for pid in running:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(not _is_zombie(p) for p in running):
        time.sleep(0.1)
    for pid in running:
        _signal(pid, signal.SIGKILL)
    for pid in _adopted_children():
        if pid not in exclude:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
    return commands


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True   # gone
    return stat[stat.rindex(")") + 2] in "ZX"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


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


GAVE_UP = "Giving up reconnection"   # flwr 1.42 logs this after --max-wait-time, then may not exit


def supervise(command: list[str], env: dict, grace: float = 10.0, out=None) -> int:
    """Run a Flower server process in the foreground, echoing its output; return its exit code.

    Ends it if it logs GAVE_UP but has not exited `grace` seconds later (flwr 1.42's SuperNode gives up
    reconnecting after --max-wait-time, then may wait forever on a non-daemon thread), and on SIGTERM or
    Ctrl-C of this process (the child is terminated, then killed): nothing is left running."""
    out = out or sys.stdout
    subreaper = _become_subreaper()   # Flower's detached helpers (flower-superexec) become our children
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def stop(signum=None, frame=None):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        _echo_until(proc, out, GAVE_UP)   # returns when it exits or gives up
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        proc.stdout.close()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if subreaper:
            end_adopted(grace, exclude=set())
    return proc.returncode


def _echo_until(proc: subprocess.Popen, out, marker: str) -> None:
    """Copy proc's output to `out` until proc exits or prints `marker`. Polls, because Flower's detached
    helpers inherit the pipe: it may never reach end-of-file while they live."""
    import select
    fd, pending = proc.stdout.fileno(), b""
    while True:
        ready, _, _ = select.select([fd], [], [], 1.0)
        chunk = os.read(fd, 65536) if ready else b""
        if chunk:
            text = chunk.decode(errors="replace")
            out.write(text)
            out.flush()
            pending = (pending + chunk)[-4096:]
            if marker.encode() in pending:
                return
        elif ready or proc.poll() is not None:   # end of file, or exited with its output drained
            return
