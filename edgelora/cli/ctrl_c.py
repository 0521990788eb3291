"""Ctrl-C while the `edgelora` command is outside its work: while it starts (its own imports, then numpy,
onnxruntime and the command's module) and once the work has ended (printing the result, Python's exit).
There a Ctrl-C ends the process at once with one line on stderr and exit code 130, where Python would print
a traceback. Inside the work (`during_work()`), Ctrl-C raises KeyboardInterrupt as usual, so that the work
stops cleanly and main() says what is intact.

Only the `edgelora` process itself is changed (its console script, or `python -m edgelora.cli`), and only
while Python's own handler is in place: a program that imports edgelora.cli keeps its Ctrl-C handling, and a
command started with SIGINT ignored (a background job of a script) keeps ignoring it. What runs before edgelora's first line (Python's
start-up: site-packages and their .pth files) is Python's own; a Ctrl-C there is outside edgelora's reach.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator

STARTING = "while starting; nothing was read or written"
FINISHING = "while finishing; every file it wrote is complete"
_said = [STARTING]  # what the one line says, when a Ctrl-C ends the process at once
_active = [False]   # whether this process is the `edgelora` command and the handler is installed


def is_the_command() -> bool:
    """Whether this process is the `edgelora` command (its console script or `python -m edgelora.cli`)."""
    if os.path.basename(sys.argv[0]) in ("edgelora", "edgelora.exe"):
        return True
    argv = list(getattr(sys, "orig_argv", []))
    return "-m" in argv and argv[argv.index("-m") + 1:argv.index("-m") + 2] == ["edgelora.cli"]


def _end_at_once(signum, frame) -> None:
    command = next((word for word in sys.argv[1:] if not word.startswith("-")), None)
    line = f"edgelora{' ' + command if command else ''}: interrupted by Ctrl-C {_said[0]}\n"
    with contextlib.suppress(OSError):  # stderr closed: the exit code still says it
        os.write(2, line.encode(errors="replace"))
    os._exit(130)


def outside_work(said: str = STARTING) -> None:
    """From now on, in the `edgelora` process, a Ctrl-C ends it at once with one line ending in `said`."""
    _said[0] = said
    if _active[0] or (is_the_command() and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
        try:
            signal.signal(signal.SIGINT, _end_at_once)
            _active[0] = True
        except ValueError:  # not the main thread: signals are not ours to set
            pass


@contextlib.contextmanager
def during_work() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt inside the block; after it, it ends the process (`FINISHING`)."""
    if not _active[0]:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        outside_work(FINISHING)
