"""files/memory.py: mapped pages handed back (Pager, release), few malloc arenas, and a fine-tune whose data
and Skip-Cache exceed --memory-budget under an address-space limit."""
import sys
from pathlib import Path

import numpy as np
import pytest

from edgelora.files.data import load_arrays
from edgelora.files.memory import FAULT_AROUND, Pager, cap_arenas, release, release_library

REPO = Path(__file__).resolve().parents[1]
linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and madvise are Linux")


def rss_file() -> int:
    """Resident file-backed memory of this process (bytes)."""
    line = next(line for line in open("/proc/self/status") if line.startswith("RssFile:"))
    return int(line.split()[1]) * 1024


@pytest.fixture
def mapped(tmp_path) -> np.memmap:
    a = np.arange(8 * 2**20, dtype=np.float32).reshape(-1, 256)          # 32 MB, rows of 1 kB
    a.tofile(tmp_path / "a.bin")
    return np.memmap(tmp_path / "a.bin", np.float32, "r", shape=a.shape)


@linux
def test_release_gives_the_pages_read_back(mapped):
    before = rss_file()
    assert float(mapped.sum(dtype=np.float64)) > 0                     # every page read
    assert rss_file() - before > 24 * 2**20
    release(mapped[10:20])                                             # a view of it is enough
    assert rss_file() - before < 4 * 2**20


@linux
def test_pager_reads_the_same_rows_within_its_budget(mapped):
    budget = 4 * 2**20
    pager = Pager(mapped, budget)
    idx = np.arange(0, len(mapped), 7)                                 # scattered rows over the whole file
    before = rss_file()
    got = pager.take(idx)
    assert rss_file() - before < 2 * budget                            # read at once, the whole 32 MB stay
    assert pager.step == budget // FAULT_AROUND
    assert np.array_equal(got, np.asarray(mapped)[idx])


def test_pager_without_a_budget_reads_at_once(mapped):
    assert np.array_equal(Pager(mapped, None).take(np.array([3, 1])), mapped[[3, 1]])


def test_release_ignores_arrays_in_memory():
    release(np.zeros(10))                                              # nothing mapped: nothing to do


def mapped_rss(name: str) -> int:
    """Resident bytes of this process's mappings of files whose path contains `name`."""
    total, inside = 0, False
    for line in open("/proc/self/smaps"):
        if line[0] in "0123456789abcdef" and "-" in line.split()[0]:
            inside = name in line
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1]) * 1024
    return total


@linux
def test_release_library_hands_back_onnxruntime_code_and_it_still_runs(toy_bundle, toy_data):
    from edgelora import Backbone
    bb = Backbone(toy_bundle)
    before = bb.rows(toy_data[0])
    bb.rows(toy_data[0])                                               # its code pages mapped again
    resident = mapped_rss("onnxruntime")
    assert release_library("onnxruntime") > 0
    assert mapped_rss("onnxruntime") < resident - 2**20               # measured: 20 MB -> 1 MB here
    assert np.array_equal(bb.rows(toy_data[0]), before)                # mapped back on use, same results
    assert release_library("no-library-has-this-name") == 0


@linux
def test_release_library_never_drops_a_private_page(tmp_path):
    """A read-only mapping holding written pages (as a library's relocated tables do) is left alone."""
    import ctypes
    import mmap
    path = tmp_path / "edgelora-test-library.bin"
    path.write_bytes(b"\1" * 2**20)
    with open(path, "rb") as f:
        clean = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        written = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    written[:4096] = b"\2" * 4096                                      # a private copy of the first page
    start = ctypes.addressof(ctypes.c_char.from_buffer(written))
    assert ctypes.CDLL(None).mprotect(ctypes.c_void_p(start), ctypes.c_size_t(2**20), mmap.PROT_READ) == 0
    assert clean[:].count(b"\1") == 2**20                             # every page of the clean one read
    assert release_library("edgelora-test-library") == 2**20           # the clean mapping only
    assert written[:2] == b"\2\2" and written[4096:4098] == b"\1\1" and clean[:1] == b"\1"


def test_cap_arenas_answers():
    assert cap_arenas(4) in (True, False)


def test_data_above_the_budget_is_mapped_not_read(tmp_path):
    x = np.random.default_rng(0).standard_normal((5000, 64)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(5000) % 3)
    np.save(tmp_path / "x.npy", x)
    for path in ("d.npz", "x.npy"):
        got, _ = load_arrays(tmp_path / path, y_key=None, max_memory=2**20)
        assert isinstance(got, np.memmap) and np.array_equal(got, x)
        small, _ = load_arrays(tmp_path / path, y_key=None, max_memory=2**30)
        assert not isinstance(small, np.memmap) and np.array_equal(small, x)


def test_error_a_compressed_npz_above_the_budget_says_how_to_map_it(tmp_path):
    np.savez_compressed(tmp_path / "z.npz", x=np.ones((5000, 64), np.float32), y=np.zeros(5000, np.int64))
    with pytest.raises(ValueError, match=r"its arrays take 1\.3 MB, more than the 1\.0 MB .* \(np\.savez, not "
                                         r"np\.savez_compressed"):
        load_arrays(tmp_path / "z.npz", max_memory=2**20)


@linux
def test_finetune_above_the_budget_under_a_512_mb_address_space_limit(tmp_path):
    """30,000 samples (7.7 MB of data, a 21 MB Skip-Cache) and --memory-budget 3 under RLIMIT_AS 512 MB (2 holds
    less than twice their 1.1 MB of bookkeeping: core/bookkeeping.py): the data was refused (more than the
    budget); the data is now mapped, the cache spilled, and the run completes with its peak resident memory
    within 100 MB of the demo's own 400-sample run."""
    from device_bench.memory512 import limit_is_enforced, measure
    if not limit_is_enforced():
        pytest.skip("RLIMIT_AS is not enforced here (an emulator)")
    bundle = REPO / "edgelora" / "data" / "demo_bundle"
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30_000, 64)).astype(np.float32) * 4 + 5
    np.savez(tmp_path / "big.npz", x=x, y=rng.integers(0, 10, 30_000))
    np.savez(tmp_path / "small.npz", x=x[:400], y=rng.integers(0, 10, 400))
    common = ["--epochs", "2", "--force-adapter", "--memory-budget", "3", "--quiet"]
    small = measure("small", ["finetune", str(bundle), "--data", "small.npz", "--out", "a0", *common], 512, tmp_path)
    big = measure("big", ["finetune", str(bundle), "--data", "big.npz", "--out", "a1", "--cache-dir", "c",
                          *common], 512, tmp_path)
    assert small["exit_status"] == 0 and big["exit_status"] == 0, (small, big)
    assert big["peak_rss_mb"] - small["peak_rss_mb"] < 100, (small, big)
