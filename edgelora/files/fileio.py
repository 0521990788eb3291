"""Crash-safe file primitives: atomic file writes, folder swaps and deletes, the names of the hidden
siblings they leave and their clean-up, an inter-process lock."""
from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable

PathLike = str | os.PathLike


def fsync_dir(path: PathLike) -> None:
    """Flush a directory entry (new or renamed files) to disk."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def write_file(path: PathLike, data: bytes) -> None:
    """Write and fsync a new file (callers write into a temp folder or rename afterwards)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


# The hidden siblings fileio makes beside a path `.<name>.<what>`: a writer's temp file or folder
# (tmp-<pid>-<random>), a folder renamed aside for a swap (old) or to be deleted (deleted-<random>), and
# the lock files callers keep beside what they guard (lock).
SIBLING = re.compile(r"\.(?P<of>.+)\.(?:tmp-(?P<pid>\d+)-[0-9a-f]+|old|(?P<deleted>deleted)-[0-9a-f]+|lock)")


def _temp_name(dst: Path) -> Path:
    """A hidden sibling `.<name>.tmp-<pid>-<random>`; the pid lets a later writer remove it after a crash."""
    return dst.with_name(f".{dst.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _aside_name(dst: Path) -> Path:
    """Where a swap without renameat2 puts the old folder between its two renames."""
    return dst.with_name(f".{dst.name}.old")


def sibling_of(name: str) -> str | None:
    """The name whose fileio sibling (temp, aside, deleted or lock) `name` is; None for any other name."""
    m = SIBLING.fullmatch(name)
    return m["of"] if m else None


def _stale(folder: Path, name: str) -> bool:
    """A temp of a writer that died (killed, power loss; its pid unused, or reused by a process that started
    after the temp was made), or a folder renamed to be deleted."""
    m = SIBLING.fullmatch(name)
    if not m or not (m["deleted"] or m["pid"]):
        return False
    return bool(m["deleted"]) or not _alive(int(m["pid"])) or _started_after(int(m["pid"]), folder / name)


def _started_after(pid: int, path: Path) -> bool:
    """Did process `pid` start after `path` was made (so it cannot be the writer whose pid the name holds)?
    Linux /proc only; False where that cannot be known."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat[stat.rindex(")") + 2:].split()[19])  # field 22, starttime, in clock ticks after boot
        # the wall-clock time of boot as of now (/proc/stat's btime drifts from the wall clock by up to seconds)
        boot = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
        made = path.lstat().st_ctime
    except (OSError, ValueError, IndexError):
        return False
    return pid != os.getpid() and boot + ticks / os.sysconf("SC_CLK_TCK") > made + 2


def remove_stale(folder: PathLike, only: str | None = None) -> int:
    """Delete the stale siblings in `folder` (of `only`, if given): temps of writers that died and folders
    renamed to be deleted; returns how many. A live writer's temp file or folder is never removed."""
    folder, removed = Path(folder), 0
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    for name in names:
        if not _stale(folder, name) or (only is not None and sibling_of(name) != only):
            continue
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed += 1
    return removed


def remove_stale_temps(dst: PathLike) -> int:
    """Delete the stale siblings of `dst` (remove_stale); returns how many."""
    dst = Path(dst)
    return remove_stale(dst.parent, dst.name)


def remove_dir(folder: PathLike) -> None:
    """Delete a folder: renamed out of sight first (atomic), so nobody sees it half-deleted under its name;
    a crash while deleting leaves a stale sibling that remove_stale clears."""
    folder = Path(folder)
    trash = folder.with_name(f".{folder.name}.deleted-{uuid.uuid4().hex[:8]}")
    os.rename(folder, trash)
    fsync_dir(folder.parent)
    shutil.rmtree(trash, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process, or not a pid at all: leave it
        return True
    return True


def atomic_write(path: PathLike, data: bytes) -> None:
    """Replace `path` with `data` so that readers see the old or the new file, never a mix."""
    path = Path(path)
    remove_stale_temps(path)
    tmp = _temp_name(path)
    try:
        write_file(tmp, data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)


def dumps_json(obj: Any) -> bytes:
    """Sorted, indented JSON: stable bytes for the same content."""
    return (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


def new_temp_dir(dst: PathLike) -> Path:
    """A fresh hidden sibling folder of `dst` to build its replacement in."""
    dst = Path(dst)
    _check_folder_target(dst)
    remove_stale_temps(dst)
    tmp = _temp_name(dst)
    tmp.mkdir(parents=True)
    return tmp


def replace_dir(tmp: PathLike, dst: PathLike) -> None:
    """Move the finished folder `tmp` to `dst`; an existing `dst` is swapped out atomically.

    On Linux, renameat2(RENAME_EXCHANGE) swaps the two folders in one step, so `dst` is at every
    instant either the complete old or the complete new folder. Elsewhere the old folder is renamed
    aside first and `recover_dir` puts it back if a crash fell between the two renames.
    """
    tmp, dst = Path(tmp), Path(dst)
    _check_folder_target(dst)
    fsync_dir(tmp)
    if not dst.exists():
        os.rename(tmp, dst)
    elif _exchange(tmp, dst):
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        old = _aside_name(dst)
        shutil.rmtree(old, ignore_errors=True)
        os.rename(dst, old)
        os.rename(tmp, dst)
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(dst.parent)


def _check_folder_target(dst: Path) -> None:
    """A folder may replace a folder, never a file or a link (the swap would hide the user's file)."""
    if dst.is_symlink() or (dst.exists() and not dst.is_dir()):
        raise ValueError(f"{dst} exists and is not a folder; expected a folder path (nothing was written)")


def write_folder(dst: PathLike, files: dict[str, bytes], what: str, fill: Callable[[Path], None] | None = None) -> Path:
    """Write `files` (name -> bytes) as the folder `dst` in one atomic swap: readers see the old folder
    or the new one, never a mix; on failure (a full disk, say) the old folder is left as it was.
    `fill(tmp)` may first put more into the new folder (e.g. a hard link to a file of the old one)."""
    dst, tmp = Path(dst), None
    try:
        tmp = new_temp_dir(dst)
        if fill is not None:
            fill(tmp)
        for name, data in files.items():
            write_file(tmp / name, data)
        replace_dir(tmp, dst)
    except OSError as e:
        raise OSError(e.errno, f"could not save the {what} to {dst}: {e.strerror or e}; "
                               f"the {what} that was there is unchanged") from e
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dst


class FileLock:
    """An exclusive flock on `path` (released by the OS if the process dies); waits up to `timeout` s.
    `read_only_ok`: where the lock file cannot be made (a read-only mount or folder), go on unlocked - no
    writer can change what is there either, and a write the holder attempts fails and says why."""

    def __init__(self, path: PathLike, what: str, timeout: float = 60.0, read_only_ok: bool = False):
        self.path, self.what, self.timeout, self._file, self._depth = Path(path), what, timeout, None, 0
        self.read_only_ok = read_only_ok

    def acquire(self) -> "FileLock":
        """Take the lock (re-entrant for this object: nested acquires just count)."""
        if self._depth:
            self._depth += 1
            return self
        try:
            f = open(self.path, "a+b")
        except OSError as e:
            if not (self.read_only_ok and e.errno in (errno.EROFS, errno.EACCES, errno.EPERM)):
                raise
            self._depth = 1
            return self
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._file, self._depth = f, 1
                return self
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    f.close()
                    raise TimeoutError(f"{self.what} is busy: another process has held {self.path} for more "
                                       f"than {self.timeout:g} s") from None
                time.sleep(0.05)

    def release(self) -> None:
        self._depth = max(0, self._depth - 1)
        if self._depth == 0 and self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def recover_dir(dst: PathLike) -> None:
    """Undo a swap interrupted between its two renames (only possible without renameat2)."""
    dst = Path(dst)
    old = _aside_name(dst)
    if not dst.exists() and old.is_dir():
        os.rename(old, dst)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths with Linux renameat2; False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    res = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if res == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"could not swap {a} and {b}: {os.strerror(err)}")
