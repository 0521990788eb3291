"""A tiny progress bar on stderr, drawn only when stderr is a terminal (no tqdm dependency)."""
from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 28


class Progress:
    """`Progress(total, label)`; `update(n, note)` sets the count; `close()` ends the line.

    Silent (every call a no-op) unless `enabled` and the stream is a TTY: logs and pipes stay clean.
    """

    def __init__(self, total: int, label: str, enabled: bool = True, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.total, self.label = max(int(total), 1), label
        self.active = enabled and _isatty(self.stream)
        self.start, self.done, self.note, self._last = time.perf_counter(), 0, "", 0.0

    def update(self, done: int, note: str = "") -> None:
        self.done, self.note = min(int(done), self.total), note
        now = time.perf_counter()
        if not self.active or (now - self._last < 0.05 and self.done < self.total):
            return  # redraw at most 20 times a second
        self._last = now
        filled = int(WIDTH * self.done / self.total)
        bar = "#" * filled + "-" * (WIDTH - filled)
        self.stream.write(f"\r{self.label:<12} [{bar}] {self.done}/{self.total} {now - self.start:5.1f}s {note}"
                          f"\033[K")
        self.stream.flush()

    def resize(self, total: int) -> None:
        """Set the count that fills the bar (known once the work is planned)."""
        self.total = max(int(total), 1)

    def close(self) -> None:
        if self.active:
            self._last = 0.0
            self.update(self.done, self.note)
            self.stream.write("\n")
            self.stream.flush()


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
