"""Skip-Cache: hits and misses, persistence across processes, float16, budget spill, repair."""
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from edgelora import Backbone, SkipCache
from tests.helpers import BackboneCounter

ROOT = Path(__file__).resolve().parent.parent


def test_backbone_runs_once_per_new_sample(toy_bundle, toy_data):
    bb = Backbone(toy_bundle)
    ran = BackboneCounter(bb)
    cache = SkipCache(bb)
    x = toy_data[0]
    rows = cache.rows(x)
    assert ran.samples == 120 and cache.stats()["misses"] == 120
    assert (cache.rows(x) == rows).all() and ran.samples == 120 and cache.stats()["hits"] == 120
    y0, t = cache.gather(rows[:5])
    ref = bb.features(x[:5])
    np.testing.assert_array_equal(y0, ref[0])
    np.testing.assert_array_equal(t, ref[1])


def test_a_fill_in_parts_copies_no_row(toy_bundle, toy_data):
    from edgelora.runtime.features import FeatureSource
    cache, first = SkipCache(Backbone(toy_bundle)), []
    source = FeatureSource.from_cache(cache, {"x": toy_data[0]}, chunk=16,
                                      progress=lambda done: first or first.append(cache.values))
    assert np.shares_memory(first[0], cache.values)                    # rows stay where the first part put them
    np.testing.assert_array_equal(source(np.arange(120))[1], Backbone(toy_bundle).features(toy_data[0])[1])


def test_duplicates_and_float64_copies_hit(toy_bundle, toy_data):
    bb = Backbone(toy_bundle)
    ran = BackboneCounter(bb)
    cache = SkipCache(bb)
    x = toy_data[0][:10]
    rows = cache.rows(np.concatenate([x, x]))
    assert ran.samples == 10 and (rows[:10] == rows[10:]).all()
    cache.rows(x.astype(np.float64))
    assert ran.samples == 10


def _count_in_other_process(bundle, cache_dir, data_path, n):
    code = f"""
import numpy as np, json
from edgelora import Backbone, SkipCache
from tests.helpers import BackboneCounter
bb = Backbone({str(bundle)!r}); ran = BackboneCounter(bb); c = SkipCache(bb, {str(cache_dir)!r})
c.rows(np.load({str(data_path)!r})[:{n}])
print(json.dumps({{"calls": ran.samples, **c.stats()}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout)


def test_second_process_reuses_disk_cache_and_adds_only_new(toy_bundle, toy_data, tmp_path):
    x = toy_data[0]
    np.save(tmp_path / "x.npy", x)
    first = _count_in_other_process(toy_bundle, tmp_path / "cache", tmp_path / "x.npy", 100)
    assert first["calls"] == 100 and first["on_disk"]
    second = _count_in_other_process(toy_bundle, tmp_path / "cache", tmp_path / "x.npy", 100)
    assert second["calls"] == 0 and second["hits"] == 100
    third = _count_in_other_process(toy_bundle, tmp_path / "cache", tmp_path / "x.npy", 110)  # +10 % new
    assert third["calls"] == 10 and third["misses"] == 10 and third["rows"] == 110


def test_float16_cache_halves_bytes(toy_bundle, toy_data, tmp_path):
    x = toy_data[0]
    c32, c16 = SkipCache(Backbone(toy_bundle)), SkipCache(Backbone(toy_bundle), tmp_path / "c", dtype="float16")
    c32.rows(x), c16.rows(x)
    assert c16.stats()["bytes"] * 2 == c32.stats()["bytes"]
    assert c16.values.dtype == np.float16
    np.testing.assert_allclose(c16.gather(np.arange(5))[1], c32.gather(np.arange(5))[1], atol=2e-2, rtol=1e-2)


def test_another_backbone_never_reuses_the_cache(toy_bundle, toy_data, tmp_path):
    from tests.helpers import mlp_bundle, random_mlp
    other = tmp_path / "other"
    mlp_bundle(other, random_mlp([10, 8, 8, 3], seed=5), ["a", "b", "c"])
    SkipCache(Backbone(toy_bundle), tmp_path / "c").rows(toy_data[0])
    bb2 = Backbone(other)
    ran = BackboneCounter(bb2)
    SkipCache(bb2, tmp_path / "c").rows(toy_data[0])
    assert ran.samples == 120


def test_memory_budget_spills_to_disk(toy_bundle, toy_data):
    row_bytes = (3 + 26) * 4
    cache = SkipCache(Backbone(toy_bundle), memory_budget=50 * row_bytes)
    cache.rows(toy_data[0][:40])
    assert not cache.stats()["on_disk"]
    cache.rows(toy_data[0])
    s = cache.stats()
    assert s["on_disk"] and s["rows"] == 120 and isinstance(cache.values, np.memmap)


def test_interrupted_append_is_ignored_and_cut(toy_bundle, toy_data, tmp_path):
    bb = Backbone(toy_bundle)
    cache = SkipCache(bb, tmp_path / "c")
    cache.rows(toy_data[0][:50])
    folder = cache.stats()["path"]
    with open(f"{folder}/values-0.bin", "ab") as f:  # an append whose meta.json commit never happened
        f.write(b"\x01" * 1000)
    bb2 = Backbone(toy_bundle)
    ran = BackboneCounter(bb2)
    again = SkipCache(bb2, tmp_path / "c")
    again.rows(toy_data[0][:60])
    assert ran.samples == 10 and len(again) == 60


def test_flipped_byte_is_detected_and_rebuilt(toy_bundle, toy_data, tmp_path):
    cache = SkipCache(Backbone(toy_bundle), tmp_path / "c")
    cache.rows(toy_data[0][:20])
    path = f"{cache.stats()['path']}/values-0.bin"
    raw = bytearray(open(path, "rb").read())
    raw[5 * 29 * 4 + 7] ^= 0xFF  # inside row 5
    open(path, "wb").write(bytes(raw))
    bb = Backbone(toy_bundle)
    ran = BackboneCounter(bb)
    with pytest.warns(UserWarning, match="1 of 20 rows failed their checksum"):
        again = SkipCache(bb, tmp_path / "c")
    assert again.stats()["repaired_rows"] == 1
    rows = again.rows(toy_data[0][:20])
    assert ran.samples == 1
    np.testing.assert_array_equal(again.gather(rows)[1], Backbone(toy_bundle).features(toy_data[0][:20])[1])


def test_corrupt_meta_rebuilds(toy_bundle, toy_data, tmp_path):
    cache = SkipCache(Backbone(toy_bundle), tmp_path / "c")
    cache.rows(toy_data[0][:20])
    with open(f"{cache.stats()['path']}/meta.json", "w") as f:
        f.write("{garbage")
    bb = Backbone(toy_bundle)
    ran = BackboneCounter(bb)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        SkipCache(bb, tmp_path / "c").rows(toy_data[0][:20])
    assert ran.samples == 20 and any("rebuilding" in str(w.message) for w in caught)


def test_clear(toy_bundle, toy_data, tmp_path):
    cache = SkipCache(Backbone(toy_bundle), tmp_path / "c")
    cache.rows(toy_data[0][:20])
    cache.clear()
    assert len(cache) == 0 and len(SkipCache(Backbone(toy_bundle), tmp_path / "c")) == 0


def test_error_bad_settings(toy_bundle):
    with pytest.raises(ValueError, match="'float32' or 'float16', found 'int8'"):
        SkipCache(Backbone(toy_bundle), dtype="int8")
    with pytest.raises(ValueError, match="positive number of bytes"):
        SkipCache(Backbone(toy_bundle), memory_budget=0)


def test_error_float16_overflow(tmp_path):
    from tests.helpers import mlp_bundle
    big = [(np.eye(4, dtype=np.float32) * 1e5, np.zeros(4, np.float32)), (np.eye(4, dtype=np.float32), np.zeros(4))]
    mlp_bundle(tmp_path / "b", big)
    with pytest.raises(ValueError, match="float16 range.*use a float32 cache"):
        SkipCache(Backbone(tmp_path / "b"), dtype="float16").rows(np.ones((2, 4), np.float32))


def test_two_writers_never_cut_each_others_rows(toy_bundle, toy_data, tmp_path):
    from edgelora.runtime.cache_rows import CacheConflictError
    x = toy_data[0]
    a, b = SkipCache(Backbone(toy_bundle), tmp_path / "c"), SkipCache(Backbone(toy_bundle), tmp_path / "c")
    b.rows(x[:12])                                   # b appends after a opened
    with pytest.raises(CacheConflictError, match="changed by another writer since it was opened"):
        a.rows(x[20:30])
    again = SkipCache(Backbone(toy_bundle), tmp_path / "c")
    assert len(again) == 12                          # b's rows are all there
    np.testing.assert_array_equal(again.gather(again.rows(x[:12]))[1], Backbone(toy_bundle).features(x[:12])[1])


def test_new_standardisation_constants_never_reuse_old_rows(toy_bundle, toy_data, tmp_path):
    import json
    from edgelora.files.bundle import MANIFEST_FILE
    SkipCache(Backbone(toy_bundle), tmp_path / "c").rows(toy_data[0][:10])
    path = toy_bundle / MANIFEST_FILE
    data = json.loads(path.read_text())
    data.pop("checksum")
    data["preprocess"]["x"]["mean"] = [0.0] * 10      # same ONNX file, other preprocessing
    path.write_text(json.dumps(data))
    bb = Backbone(toy_bundle)
    ran = BackboneCounter(bb)
    SkipCache(bb, tmp_path / "c").rows(toy_data[0][:10])
    assert ran.samples == 10
