"""One writer per output: an exclusive lock beside a file or folder that a run writes, held for the whole run.

A second run into the same output is refused at once, naming the run that holds it, instead of both
printing "saved" while the last one silently wins (or two runs interleaving one checkpoint). The lock is
the hidden sibling `.<name>.lock` (fileio.SIBLING), an flock the OS releases if the holder dies; it holds
the holder's pid and command line, and is removed when released. Taking it also removes what killed
writers of that output left behind (fileio.remove_stale_temps).
"""
from __future__ import annotations

import errno
import fcntl
import os
import sys
from pathlib import Path

from .fileio import PathLike, remove_stale_temps


class OutputBusyError(RuntimeError):
    """Another run is writing the same output."""


def lock_path(output: PathLike) -> Path:
    output = Path(output)
    return output.with_name(f".{output.name}.lock")


class OutputLock:
    """The writer's lock on `output` (named `flag` in messages), taken without waiting."""

    def __init__(self, output: PathLike, flag: str):
        self.output, self.flag, self._fd = Path(output), flag, None

    def acquire(self) -> "OutputLock":
        path = lock_path(self.output)
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                if e.errno in (errno.EROFS, errno.EACCES, errno.ENOENT, errno.EPERM):
                    return self  # nowhere to write beside it: the command's own write then fails and says why
                raise
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "another process"
                os.close(fd)
                raise OutputBusyError(f"{self.flag} {self.output} is being written by another run ({holder[:200]}); "
                                      f"wait for it to finish or choose another {self.flag} (nothing was written)") \
                    from None
            if _same_file(fd, path):  # not a lock file its previous holder removed while we waited
                break
            os.close(fd)
        try:  # who holds it, for the message a second run prints; a full disk must not stop the run here
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()}: {' '.join(sys.argv)[:300]}\n".encode())
        except OSError:
            pass
        self._fd = fd
        remove_stale_temps(self.output)
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            lock_path(self.output).unlink(missing_ok=True)  # while still held: a waiter re-checks the inode
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False
