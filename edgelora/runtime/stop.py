"""Stopping a backbone run inside onnxruntime: a time limit per run, and Ctrl-C or SIGTERM at any moment.

Python runs signal handlers only between bytecodes, so a signal that arrives while onnxruntime computes
waits for the run to end - forever, for a hostile model with a Loop of 2^62 iterations. `on_signals()`
also routes SIGINT and SIGTERM through a wakeup file descriptor (signal.set_wakeup_fd) that a watcher
thread reads: it sets `terminate` on the RunOptions of every run in progress (onnxruntime releases the GIL
while it runs and checks that flag between nodes and loop iterations), and the Python handler
(KeyboardInterrupt, the CLI's SIGTERM handler) runs as soon as control is back in Python. `limited(s)`
gives one run its RunOptions, terminated by a timer once `s` seconds have passed.
"""
from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
from typing import Iterator

import onnxruntime as ort

_active: set = set()           # the RunOptions of the runs in progress
_guard = threading.Lock()


@contextlib.contextmanager
def limited(seconds: float | None) -> Iterator[ort.RunOptions]:
    """RunOptions for one run, terminated after `seconds` (None: no limit) or by stop_all()."""
    options = ort.RunOptions()
    timer = None
    if seconds is not None:
        timer = threading.Timer(seconds, setattr, (options, "terminate", True))
        timer.daemon = True
        timer.start()
    with _guard:
        _active.add(options)
    try:
        yield options
    finally:
        with _guard:
            _active.discard(options)
        if timer is not None:
            timer.cancel()


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
        watcher.join(1.0)
        os.close(r), os.close(w)


def _watch(fd: int, done: threading.Event) -> None:
    while not done.is_set():
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready and any(b in (signal.SIGINT, signal.SIGTERM) for b in os.read(fd, 64)):
            stop_all()
