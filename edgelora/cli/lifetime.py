"""How the `edgelora` process starts and ends, for a command that a device runs again and again.

- While the modules load (edgelora's, numpy's, onnxruntime's and the command's), Python's cyclic garbage
  collector would walk the new objects again and again and find nothing to free: they live as long as the
  process. `start()` turns it off, and `started()`, once the command's module is in, sets those objects
  aside (gc.freeze: collections never walk them again, and the few hundred objects of garbage among them are
  kept) and turns it back on for the work.
- Python's ordinary exit frees every module and object one by one and then runs the C libraries' exit handlers
  (onnxruntime's: its environment, thread pools and telemetry store): 20-60 ms of a fine-tune process on a
  2-core x86_64 (docs/footprint.md), for memory the kernel takes back anyway. When the command has returned,
  its work is done and every file it wrote is complete: written, fsynced and renamed into place, its locks
  released (what ctrl_c's FINISHING says). `end(code)` then does what of Python's exit anyone can observe, in
  Python's order, and ends the process with os._exit: the atexit handlers run (weakref.finalize's among them,
  e.g. removing a spilled cache's temporary folder); sys.stdout and sys.stderr are flushed, then C's stdio
  buffers (fflush(NULL), as C's exit does). It returns instead, for the ordinary exit, while a thread that is
  not a daemon still runs (Python would wait for it) or when a flush fails.
Only the `edgelora` process itself: start() when ctrl_c.is_the_command (the script's name), end() only from
cli.entry (the console script, `python -m edgelora.cli`); a program calling main() keeps its process, and gets
its collector back when main() has loaded the command (a program named `edgelora` that imports edgelora.cli
without calling main() keeps the collector off).
"""
from __future__ import annotations

import atexit
import gc
import os
import sys

_paused = [False]   # whether start() turned the collector off


def start() -> None:
    """Turn the garbage collector off while the modules load (if it is on)."""
    if gc.isenabled():
        gc.disable()
        _paused[0] = True


def started() -> None:
    """The modules are in: set their objects aside from every later collection and turn the collector back on."""
    if _paused[0]:
        gc.freeze()
        gc.enable()
        _paused[0] = False


def end(code: int) -> None:
    """End the process now with exit code `code`, after the atexit handlers and every flush; returns (for the
    ordinary exit) when a non-daemon thread is still running or a flush fails."""
    threading = sys.modules.get("threading")
    if threading is not None and any(t.is_alive() and not t.daemon for t in threading.enumerate()
                                     if t is not threading.main_thread()):
        return
    atexit._run_exitfuncs()   # what Python's exit runs first; they are cleared, so never run twice
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        import ctypes
        ctypes.CDLL(None).fflush(None)   # what C libraries printed and their stdio still holds
    except Exception:  # noqa: BLE001 - a closed or broken stream, no libc: the ordinary exit reports it
        return
    os._exit(code)
