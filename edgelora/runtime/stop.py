"""Stopping a backbone run inside onnxruntime: a time limit per run, and Ctrl-C or SIGTERM at any moment.

Python runs signal handlers only between bytecodes, so a signal that arrives while onnxruntime computes
waits for the run to end - forever, for a hostile model with a Loop of 2^62 iterations. `on_signals()`
also routes SIGINT and SIGTERM through a wakeup file descriptor (signal.set_wakeup_fd) that a watcher
thread reads: it sets `terminate` on the RunOptions of every run in progress (onnxruntime releases the GIL
while it runs and checks that flag between nodes and loop iterations), and the Python handler
(KeyboardInterrupt, the CLI's SIGTERM handler) runs as soon as control is back in Python. `limited(s)`
gives one run its RunOptions, terminated by one shared watchdog thread once `s` seconds have passed.
"""
from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
import time
from typing import Iterator

import onnxruntime as ort

_active: dict = {}             # the RunOptions of the runs in progress -> their deadline (monotonic s) or None
_guard = threading.Lock()
_watchdog: threading.Thread | None = None
TICK = 0.05                    # how often the one watchdog thread looks for runs past their deadline


@contextlib.contextmanager
def limited(seconds: float | None) -> Iterator[ort.RunOptions]:
    """RunOptions for one run, terminated after `seconds` (None: no limit) or by stop_all()."""
    options = ort.RunOptions()
    with _guard:
        _active[options] = None if seconds is None else time.monotonic() + seconds
        if seconds is not None:
            _start_watchdog()
    try:
        yield options
    finally:
        with _guard:
            del _active[options]


def _start_watchdog() -> None:
    """One daemon thread for every limit (a thread per run would cost a stack of address space each)."""
    global _watchdog
    if _watchdog is None or not _watchdog.is_alive():
        _watchdog = threading.Thread(target=_watch_deadlines, name="edgelora-time-limit", daemon=True)
        _watchdog.start()


def _watch_deadlines() -> None:
    while True:
        time.sleep(TICK)
        now = time.monotonic()
        with _guard:
            for options, deadline in _active.items():
                if deadline is not None and now >= deadline:
                    options.terminate = True


def stop_all() -> None:
    """Terminate every run in progress (they raise; see Backbone.rows)."""
    with _guard:
        for options in _active:
            options.terminate = True


@contextlib.contextmanager
def on_signals() -> Iterator[None]:
    """While active (in the main thread), SIGINT and SIGTERM also terminate the onnxruntime runs in progress."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        previous = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    except ValueError:  # pragma: no cover - not the main thread after all
        os.close(r), os.close(w)
        yield
        return
    done = threading.Event()
    watcher = threading.Thread(target=_watch, args=(r, done), name="edgelora-signals", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous)
        done.set()
        try:
            os.write(w, b"\0")   # wakes the watcher now, not at its next poll (up to 0.1 s of every command)
        except BlockingIOError:   # the pipe is full: the watcher has bytes to read already
            pass
        watcher.join(1.0)
        os.close(r), os.close(w)


def _watch(fd: int, done: threading.Event) -> None:
    while not done.is_set():
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready and any(b in (signal.SIGINT, signal.SIGTERM) for b in os.read(fd, 64)):
            stop_all()
