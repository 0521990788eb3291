"""Resource limits: a memory budget under an address-space cap, and a full disk during every kind of save.

The memory test runs in a subprocess under RLIMIT_AS = (address space after start-up) + 1.5 x the cache's
size. With `memory_budget` the cache spills to a memory-mapped file (file-backed pages the kernel can
evict) and a fine-tune completes while the peak of what edgelora allocates (Python and numpy allocations,
tracemalloc; transient batches included) stays under half the cache and the process's anonymous memory
(RssAnon, what cannot be paged out) grows by under a quarter of it; without a budget the whole cache is
allocated. Under qemu-user (emulated aarch64) the
limit is not enforced and RssAnon includes the emulator's own heap: the script detects that the limit is
not enforced and the test then judges the allocations alone. The full-disk test mounts a small
tmpfs in a private mount namespace (`unshare -rm`, no root needed where user namespaces are allowed)
and fills it; where that is not possible it is skipped, and the failing-writer tests below (a writer
that writes half its bytes, then raises ENOSPC) cover the same code paths everywhere.
"""
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgelora import Backbone, SkipCache, TrainConfig, finetune, load_adapter
from edgelora.files.checkpoint import load_checkpoint
from tests.helpers import BackboneCounter

REPO = Path(__file__).resolve().parents[1]
FAST = TrainConfig(epochs=2, batch_size=10)

MEMORY_SCRIPT = """
import mmap, resource, sys, tracemalloc
import numpy as np
from device_bench import crash_setup as crash
from edgelora import Backbone, SkipCache, TrainConfig, finetune
crash.WIDTHS = [16, 6144, 4]                  # one cheap, wide hidden layer: 24.6 kB of cache per sample
root, budget = sys.argv[1], sys.argv[2] == "budget"
crash.make_bundle(__import__("pathlib").Path(root) / "bundle")
bb = Backbone(root + "/bundle")
n = 10240
rng = np.random.default_rng(0)
x, y = rng.standard_normal((n, 16)).astype(np.float32), rng.integers(0, 4, n)
bb.features(x[:256])                          # warm up onnxruntime's allocations before measuring
size = n * (16 + 6144 + 4) * 4                # the cache: 241 MB in float32

def anon():                                   # resident memory that is not file-backed, in bytes
    line = next(l for l in open("/proc/self/status") if l.startswith("RssAnon:"))
    return int(line.split()[1]) * 1024

used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (used + int(1.5 * size), resource.RLIM_INFINITY))
try:                                          # qemu-user ignores RLIMIT_AS: then only the allocations count
    mmap.mmap(-1, 2 * size).close()           # reserves address space only, touches no page
    enforced = 0
except OSError:
    enforced = 1
start = anon()
tracemalloc.start()
try:
    cache = SkipCache(bb, memory_budget=32 * 2**20 if budget else None)
    cache.rows(x)
    finetune(bb, x, y, TrainConfig(epochs=1, batch_size=64, val_fraction=0.0), cache=cache)
    print("ok", cache.stats()["on_disk"], size, anon() - start, tracemalloc.get_traced_memory()[1], enforced)
except MemoryError as e:
    print("MemoryError", e)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux")
def test_memory_budget_is_honoured_under_an_address_space_limit(tmp_path):
    def run(mode):
        out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path / mode), mode], capture_output=True,
                             text=True, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
                             timeout=600)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()
    with_budget = run("budget")
    assert with_budget[:2] == ["ok", "True"], with_budget    # spilled to disk and fine-tuned within the cap
    size, grown, allocated, enforced = map(int, with_budget[2:])
    assert allocated < 0.25 * size, with_budget              # edgelora allocated far less than the cache
    assert not enforced or grown < 0.25 * size, with_budget  # and its rows stayed out of anonymous memory
    without = run("none")
    assert without[0] == "MemoryError" or (without[1] == "False" and int(without[4]) >= 0.9 * size
                                           and (not enforced or int(without[3]) >= 0.9 * size)), without


# --- a full disk ---------------------------------------------------------------------------------------

def _can_mount_tmpfs() -> bool:
    if not shutil.which("unshare") or not sys.platform.startswith("linux"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


DISK_SCRIPT = """
import errno, json, os, subprocess, sys
from pathlib import Path
import numpy as np
from edgelora import Backbone, SkipCache, TrainConfig, finetune, load_adapter
from edgelora.files.checkpoint import load_checkpoint
from tests.helpers import BackboneCounter, mlp_bundle, random_mlp

disk, work = Path(sys.argv[1]), Path(sys.argv[2])     # disk: the small tmpfs; work: bundle and data elsewhere
bb = Backbone(work / "bundle")
rng = np.random.default_rng(0)
x = rng.standard_normal((120, 10)).astype(np.float32)
y = np.repeat(np.arange(3), 40)
cfg = TrainConfig(epochs=2, batch_size=10)
old, _ = finetune(bb, x, y, cfg, checkpoint_dir=disk / "ckpt")
old.save(disk / "adapter")
cache = SkipCache(bb, disk / "cache")
cache.rows(x[:60])
before = {p.name: p.read_bytes() for p in (disk / "adapter").iterdir()}
ckpt_before = load_checkpoint(disk / "ckpt")[0]

def fill(leave):
    # fill the disk, then free `leave` bytes
    with open(disk / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC
    os.truncate(disk / "filler", max(0, os.path.getsize(disk / "filler") - leave))

result = {}
for leave in (0, 4096):                       # nothing free; one page (an adapter file fits, not two)
    fill(leave)
    newer, _ = finetune(bb, x, y, TrainConfig(epochs=3, batch_size=10, r=16))
    try:
        newer.save(disk / "adapter")
        result[f"adapter_save_{leave}"] = "saved"
    except OSError as e:
        result[f"adapter_save_{leave}"] = errno.errorcode[e.errno]
    intact = {p.name: p.read_bytes() for p in (disk / "adapter").iterdir()} == before
    result[f"adapter_intact_{leave}"] = intact and np.array_equal(load_adapter(disk / "adapter").flat, old.flat)
    try:
        finetune(bb, x, y, TrainConfig(epochs=3, batch_size=10, seed=5), checkpoint_dir=disk / "ckpt")
        result[f"checkpoint_{leave}"] = "saved"
    except OSError as e:
        result[f"checkpoint_{leave}"] = errno.errorcode[e.errno]
    result[f"checkpoint_intact_{leave}"] = load_checkpoint(disk / "ckpt")[0] == ckpt_before
    try:
        SkipCache(bb, disk / "cache").rows(x)
        result[f"cache_{leave}"] = "saved"
    except OSError as e:
        result[f"cache_{leave}"] = errno.errorcode[e.errno]
    cli = subprocess.run([sys.executable, "-m", "edgelora.cli", "finetune", str(work / "bundle"), "--data",
                          str(work / "train.npz"), "--out", str(disk / "adapter"), "--epochs", "2", "--rank", "16",
                          "--batch-size", "10"], capture_output=True, text=True)
    result[f"cli_{leave}"] = [cli.returncode, cli.stderr.strip().splitlines()]
    result[f"cli_intact_{leave}"] = {p.name: p.read_bytes() for p in (disk / "adapter").iterdir()} == before
    os.unlink(disk / "filler")
    bb2 = Backbone(work / "bundle")                      # with space again: the cache kept its 60 rows exactly
    ran = BackboneCounter(bb2)
    again = SkipCache(bb2, disk / "cache")
    rows = again.rows(x[:60])
    result[f"cache_kept_{leave}"] = ran.samples == 0 and np.array_equal(again.gather(rows)[1], bb.features(x[:60])[1])
    result[f"leftovers_{leave}"] = sorted(p.name for p in disk.rglob(".*") if not p.name.endswith(".lock"))  # locks stay
print(json.dumps(result))
"""


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="cannot mount a tmpfs in a user namespace (unshare -rm) here; "
                                                   "the failing-writer tests below cover the same paths")
def test_full_disk_during_every_save_leaves_the_old_files(toy_bundle, toy_data, tmp_path):
    np.savez(tmp_path / "train.npz", x=toy_data[0], y=toy_data[1])
    disk = tmp_path / "disk"
    disk.mkdir()
    script = tmp_path / "disk_full.py"
    script.write_text(DISK_SCRIPT)
    cmd = f"mount -t tmpfs -o size=512k tmpfs {disk} && exec {sys.executable} {script} {disk} {tmp_path}"
    out = subprocess.run(["unshare", "-rm", "sh", "-c", cmd], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    for leave in (0, 4096):
        assert r[f"adapter_save_{leave}"] == "ENOSPC" and r[f"adapter_intact_{leave}"], r
        assert r[f"checkpoint_{leave}"] == "ENOSPC" and r[f"checkpoint_intact_{leave}"], r
        assert r[f"cache_{leave}"] == "ENOSPC" and r[f"cache_kept_{leave}"], r
        code, lines = r[f"cli_{leave}"]
        assert code == 1 and len(lines) == 1 and "could not save the adapter to" in lines[0] \
            and "No space left on device" in lines[0] and "unchanged" in lines[0], r[f"cli_{leave}"]
        assert r[f"cli_intact_{leave}"] and r[f"leftovers_{leave}"] == [], r


# --- a failing writer (everywhere) -------------------------------------------------------------------------

def half_then_enospc(path, data):
    """A write that stops half-way because the disk is full."""
    with open(path, "wb") as f:
        f.write(bytes(data)[:len(data) // 2])
    raise OSError(errno.ENOSPC, "No space left on device")


def test_failing_writer_during_checkpoint_keeps_the_previous_checkpoint(toy_bundle, toy_data, tmp_path, monkeypatch):
    bb = Backbone(toy_bundle)
    finetune(bb, *toy_data, FAST, checkpoint_dir=tmp_path / "ckpt")
    meta, arrays = load_checkpoint(tmp_path / "ckpt")
    monkeypatch.setattr("edgelora.files.fileio.write_file", half_then_enospc)
    with pytest.raises(OSError, match="No space"):
        finetune(bb, *toy_data, TrainConfig(epochs=3, batch_size=10, seed=3), checkpoint_dir=tmp_path / "ckpt")
    again = load_checkpoint(tmp_path / "ckpt")
    assert again[0] == meta and all(np.array_equal(again[1][k], v) for k, v in arrays.items())
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_failing_writer_during_adapter_save_half_written(toy_bundle, toy_data, tmp_path, monkeypatch):
    bb = Backbone(toy_bundle)
    old, _ = finetune(bb, *toy_data, FAST)
    old.save(tmp_path / "ad")
    before = {p.name: p.read_bytes() for p in (tmp_path / "ad").iterdir()}
    newer, _ = finetune(bb, *toy_data, TrainConfig(epochs=3, batch_size=10, r=8))
    monkeypatch.setattr("edgelora.files.fileio.write_file", half_then_enospc)
    with pytest.raises(OSError, match="No space"):
        newer.save(tmp_path / "ad")
    assert {p.name: p.read_bytes() for p in (tmp_path / "ad").iterdir()} == before
    np.testing.assert_array_equal(load_adapter(tmp_path / "ad").flat, old.flat)


def test_failing_commit_of_the_cache_keeps_committed_rows(toy_bundle, toy_data, tmp_path, monkeypatch):
    x = toy_data[0]
    SkipCache(Backbone(toy_bundle), tmp_path / "c").rows(x[:50])

    def no_space(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr("edgelora.runtime.cache_rows.atomic_write", no_space)   # rows appended, meta.json never updated
    with pytest.raises(OSError, match="No space"):
        SkipCache(Backbone(toy_bundle), tmp_path / "c").rows(x)
    monkeypatch.undo()
    bb = Backbone(toy_bundle)
    ran = BackboneCounter(bb)
    with pytest.warns(UserWarning, match="discarded .* bytes of an interrupted write"):
        cache = SkipCache(bb, tmp_path / "c")
    assert len(cache) == 50 and cache.stats()["discarded_bytes"] > 0
    rows = cache.rows(x)
    assert ran.samples == 70
    np.testing.assert_array_equal(cache.gather(rows)[1], Backbone(toy_bundle).features(x)[1])


def test_a_cache_that_failed_to_commit_stays_consistent_in_the_same_process(toy_bundle, toy_data, tmp_path,
                                                                            monkeypatch):
    x = toy_data[0]
    bb = Backbone(toy_bundle)
    cache = SkipCache(bb, tmp_path / "c")
    cache.rows(x[:50])
    with monkeypatch.context() as m:
        m.setattr("edgelora.runtime.cache_rows.atomic_write", lambda path, data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
        with pytest.raises(OSError, match="could not add rows to the cache .* the rows cached before are kept"):
            cache.rows(x[50:80])
    rows = cache.rows(x)      # the disk has space again: the same object goes on, every row right
    np.testing.assert_array_equal(cache.gather(rows)[1], Backbone(toy_bundle).features(x)[1])
    assert len(SkipCache(Backbone(toy_bundle), tmp_path / "c")) == 120
