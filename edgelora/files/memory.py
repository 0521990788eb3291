"""What a memory budget asks of the process itself: few malloc arenas, and mapped file pages given back.

Two costs that no array size shows. glibc gives each thread that allocates its own malloc arena, and each
arena reserves 64 MB of address space (onnxruntime's thread pool, the stop watcher): under an
address-space limit (RLIMIT_AS, a small board without swap) that reservation, not the data, is what
fails first (and glibc keeps large freed blocks in its heap once it has raised its mmap threshold). And the pages of a memory-mapped file (the on-disk Skip-Cache, a large data file) count in
the process's resident memory once read, until the kernel needs them back: reading a 700 MB cache once
leaves 700 MB resident. `cap_arenas` limits the first; `Pager` hands mapped pages back as reading goes (the layers above
use both: files/data.py, runtime/features.py, cli/finetune.py). The same holds for a shared library's code:
`release_library` hands back the pages of onnxruntime that loading a model touched and running it does not need
(runtime/backbone.py, runtime/features.py).
"""
from __future__ import annotations

import ctypes
import mmap
import os

import numpy as np

M_ARENA_MAX = -8   # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024   # glibc's initial threshold, kept: blocks above it are mapped, and unmapped when freed
MADV_DONTNEED = 4  # Linux's madvise advice (sys/mman.h)
FAULT_AROUND = 64 * 1024   # Linux's default fault_around_bytes


def cap_arenas(arenas: int = 2) -> bool:
    """Let glibc create at most `arenas` malloc arenas from now on, and map every block above MMAP_THRESHOLD
    (glibc raises its threshold to the largest block freed: a freed 8 MB index array then stays in the heap,
    resident, and the next one is carved beside it). False where that is not glibc."""
    import ctypes.util  # imports subprocess (18 ms of every command's start): only when a budget asks for this
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return bool(libc is not None and libc.mallopt(M_ARENA_MAX, arenas) == 1
                    and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1)
    except (OSError, AttributeError):
        return False


def release(array) -> None:
    """Drop the resident pages of the read-only file mapping behind `array` (an np.memmap or a view of one):
    they stay in the page cache, so reading them again costs no disk I/O, but no longer count in this process."""
    while array is not None and not isinstance(array, mmap.mmap):
        m = getattr(array, "_mmap", None)
        if isinstance(m, mmap.mmap) and getattr(array, "mode", None) == "r":  # never a map holding changes
            array = m
            break
        array = getattr(array, "base", None)
    if isinstance(array, mmap.mmap) and hasattr(array, "madvise") and not array.closed and len(array):
        try:
            array.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):   # a platform without it: the pages stay, nothing breaks
            pass


def release_library(name: str) -> int:
    """Drop from this process's resident memory the mapped pages of every loaded file whose path contains `name`
    (e.g. "onnxruntime"), in its read-only mappings that hold no private page (code and constants, never data nor
    relocated tables). They stay in the page cache: code run again is mapped back on use, without disk I/O.
    Returns the bytes of the mappings released; 0 where /proc/self/maps or madvise is missing (not Linux)."""
    try:
        with open("/proc/self/maps") as f:
            maps = [line for line in f.read().splitlines() if _read_only_of(line, name)]
        madvise = ctypes.CDLL(None).madvise
        _SHARED_ONLY.update(_without_private_pages([line for line in maps if line not in _SHARED_ONLY]))
    except (OSError, AttributeError):
        return 0
    madvise.argtypes, done = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], 0
    for line in maps:
        start, end = (int(a, 16) for a in line.split(maxsplit=1)[0].split("-"))
        if _SHARED_ONLY.get(line) and madvise(start, end - start, MADV_DONTNEED) == 0:
            done += end - start
    return done


_SHARED_ONLY: dict[str, bool] = {}  # a mapping's /proc/self/maps line -> it holds no private (written) page
# the flags of a page in /proc/self/pagemap (one 64-bit entry per page; the kernel's admin-guide/mm/pagemap.rst)
PM_PRESENT, PM_SWAP, PM_FILE = np.uint64(1 << 63), np.uint64(1 << 62), np.uint64(1 << 61)


def _read_only_of(line: str, name: str) -> bool:
    """A /proc/self/maps line of a read-only mapping of a file whose path contains `name`."""
    part = line.split(maxsplit=5)
    return len(part) == 6 and name in part[5] and "w" not in part[1]


def _without_private_pages(lines: list[str]) -> dict[str, bool]:
    """Each of these /proc/self/maps lines -> whether its mapping holds no private page: none resident that is
    not the file's own (a copy-on-write copy) and none swapped out. Read from /proc/self/pagemap, which walks the
    page tables of these ranges only (/proc/self/smaps walks every mapping's: 2-10 ms)."""
    if not lines:
        return {}
    found = {}
    with open("/proc/self/pagemap", "rb", buffering=0) as f:
        for line in lines:
            start, end = (int(a, 16) // mmap.PAGESIZE for a in line.split(maxsplit=1)[0].split("-"))
            raw = os.pread(f.fileno(), 8 * (end - start), 8 * start)
            if len(raw) != 8 * (end - start):   # a short read: left alone
                found[line] = False
                continue
            flags = np.frombuffer(raw, np.uint64)
            found[line] = not (((flags & (PM_PRESENT | PM_FILE)) == PM_PRESENT) | ((flags & PM_SWAP) != 0)).any()
    return found


class Pager:
    """Reads rows of a memory-mapped array a few at a time, handing the mapped pages back to the system
    whenever what was read adds up to `budget` bytes (None: read at once, nothing released). A row read
    maps up to FAULT_AROUND bytes around it (Linux maps neighbouring cached pages on each fault), so rows
    spread over a file are counted at that size."""

    def __init__(self, array: np.ndarray, budget: int | None):
        self.array, self.budget, self.touched = array, budget, 0
        row = array[:1].nbytes
        self.cost = max(FAULT_AROUND, row)                       # bytes mapped by one scattered row
        self.step = max(1, budget // self.cost) if budget else 0

    def take(self, idx: np.ndarray) -> np.ndarray:
        """array[idx] (a copy), the pages read given back as they add up to the budget."""
        if not self.step:
            return self.array[idx]
        parts = []
        for a in range(0, len(idx), self.step):
            parts.append(self.array[idx[a:a + self.step]])
            self.touched += len(parts[-1]) * self.cost
            if self.touched >= self.budget:
                release(self.array)
                self.touched = 0
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def read(self, start: int, stop: int) -> None:
        """Rows start..stop were just read in order (a fill): give their pages back once they add up."""
        if self.step:
            self.touched += (stop - start) * self.array[:1].nbytes
            if self.touched >= self.budget:
                release(self.array)
                self.touched = 0
