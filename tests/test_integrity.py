"""Integrity: a flipped byte anywhere in an adapter, a checkpoint or the Skip-Cache is detected.

Each test flips bytes of a file in place (XOR with a few patterns) and checks that loading either
fails with a ValueError naming the file, or - when the flip left the parsed content unchanged (JSON
whitespace) - gives exactly the original content. Never a silently different model or cache row.
"""
import json
import re
import shutil
import warnings

import numpy as np
import pytest

from edgelora import Backbone, SkipCache, TrainConfig, finetune, load_adapter
from edgelora.files.adapter import CONFIG_FILE, WEIGHTS_FILE
from edgelora.files.checkpoint import ARRAYS_FILE, META_FILE, load_checkpoint
from tests.helpers import BackboneCounter

FAST = TrainConfig(epochs=2, batch_size=10)
PATTERNS = (0x01, 0x80, 0xFF)  # the lowest bit keeps JSON valid most often (digit 8 -> 9): the hardest case


def flip(path, i, pattern):
    """XOR byte i of `path` with `pattern` in place (flipping twice restores the file).

    In place rather than rewritten: ext4 flushes a truncated-and-rewritten file on close, 2 ms a time."""
    with open(path, "r+b") as f:
        f.seek(i)
        byte = f.read(1)[0]
        f.seek(i)
        f.write(bytes([byte ^ pattern]))


def positions(size, limit, seed=0):
    """Every byte position when the file is small, else `limit` random ones (always the first and last)."""
    if size <= limit:
        return list(range(size))
    rng = np.random.default_rng(seed)
    return sorted({0, size - 1, *rng.choice(size, limit - 2, replace=False).tolist()})


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    from tests.helpers import mlp_bundle, random_mlp
    root = tmp_path_factory.mktemp("integrity")
    mlp_bundle(root / "bundle", random_mlp([10, 8, 8, 3]), ["a", "b", "c"])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 10)).astype(np.float32)
    y = np.repeat(np.arange(3), 20)
    bb = Backbone(root / "bundle")
    adapter, _ = finetune(bb, x, y, FAST, checkpoint_dir=root / "ckpt")
    adapter.save(root / "adapter")
    return root, bb, x, y


@pytest.mark.parametrize("name", [WEIGHTS_FILE, CONFIG_FILE])
def test_adapter_flipped_byte_anywhere_is_refused(adapter_dir, name):
    root, bb, _, _ = adapter_dir
    folder = root / "adapter"
    good = load_adapter(folder, bb.manifest)
    path = folder / name
    refused = same = 0
    for i in range(path.stat().st_size):  # every byte, lowest bit; a sample with the other patterns
        for pattern in PATTERNS if i % 16 == 0 else PATTERNS[:1]:
            flip(path, i, pattern)
            try:
                loaded = load_adapter(folder, bb.manifest)
            except ValueError as e:
                assert name in str(e), str(e)
                refused += 1
            else:  # only a flip that parses to the same content may load, and then it is the same adapter
                assert loaded.config == good.config and np.array_equal(loaded.flat, good.flat), (name, i, pattern)
                same += 1
            finally:
                flip(path, i, pattern)
    assert refused > 0 and same <= refused // 50, (refused, same)


def test_adapter_config_edit_that_stays_valid_is_refused(adapter_dir):
    """An edit that keeps the JSON valid (lora_alpha + 1) changes the model: the config checksum catches it."""
    root, bb, _, _ = adapter_dir
    path = root / "adapter" / CONFIG_FILE
    raw = path.read_text()
    try:
        edited = re.sub(r'"lora_alpha": ([0-9.]+)', lambda m: f'"lora_alpha": {float(m.group(1)) + 1.0}', raw)
        assert edited != raw
        path.write_text(edited)
        with pytest.raises(ValueError, match=f"{CONFIG_FILE} is corrupt or was edited"):
            load_adapter(root / "adapter")
    finally:
        path.write_text(raw)


@pytest.mark.parametrize("name", [ARRAYS_FILE, META_FILE])
def test_checkpoint_flipped_byte_anywhere_is_refused(adapter_dir, name):
    root, _, _, _ = adapter_dir
    folder = root / "ckpt"
    meta, arrays = load_checkpoint(folder)
    path = folder / name
    refused = 0
    for i in positions(path.stat().st_size, 400, seed=1):
        for pattern in PATTERNS[::2]:
            flip(path, i, pattern)
            try:
                got = load_checkpoint(folder)
            except ValueError as e:
                assert name in str(e), str(e)
                refused += 1
            else:
                assert got[0] == meta and all(np.array_equal(got[1][k], v) for k, v in arrays.items()), (name, i)
            finally:
                flip(path, i, pattern)
    assert refused > 0


def test_checkpoint_flip_makes_resume_fail_with_the_file_name(adapter_dir):
    root, bb, x, y = adapter_dir
    path = root / "ckpt" / META_FILE
    raw = path.read_text()
    data = json.loads(raw)
    data["runs"][0]["epoch"] = 1  # still valid JSON, a different state: the checksum catches it
    try:
        path.write_text(json.dumps(data))
        with pytest.raises(ValueError, match=f"{META_FILE} is corrupt"):
            finetune(bb, x, y, FAST, checkpoint_dir=root / "ckpt", resume=True)
    finally:
        path.write_text(raw)


@pytest.fixture(scope="module")
def cache_root(adapter_dir):
    root, bb, x, _ = adapter_dir
    cache = SkipCache(bb, root / "cache")
    cache.rows(x[:20])
    return root / "cache", cache.stats()["path"]


@pytest.mark.parametrize("name,row_bytes", [("keys-0.bin", 16), ("values-0.bin", 29 * 4), ("crc-0.bin", 4),
                                            ("meta.json", None)])
def test_cache_flipped_byte_is_detected_and_only_affected_rows_recomputed(adapter_dir, cache_root, tmp_path,
                                                                          name, row_bytes):
    _, bb, x, _ = adapter_dir
    x = x[:20]
    ref = bb.features(x)
    root, folder = cache_root
    sub = folder[len(str(root)) + 1:]
    size = (root / sub / name).stat().st_size
    ran = BackboneCounter(bb)
    for i in positions(size, 30, seed=2):
        work = tmp_path / f"c{i}"
        shutil.copytree(root, work)
        flip(work / sub / name, i, 0xFF)
        ran.samples = 0
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cache = SkipCache(bb, work)
        messages = " ".join(str(w.message) for w in caught)
        y0, t = cache.gather(cache.rows(x))
        assert np.array_equal(y0, ref[0]) and np.array_equal(t, ref[1]), (name, i)
        if row_bytes is None:  # the commit record is broken: the whole cache is rebuilt, with a warning
            assert ran.samples == 20 and "meta.json is unreadable or corrupt" in messages, (i, messages)
        else:  # exactly the one row holding byte i is recomputed, and the warning names the file
            assert ran.samples == 1 and cache.stats()["repaired_rows"] == 1 and name in messages, (i, messages)
        shutil.rmtree(work)
