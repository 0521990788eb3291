"""A fine-tune's per-sample bookkeeping (edgelora/core/bookkeeping.py): dtypes as small as exact, and the
budget check that refuses, before the fill, samples whose bookkeeping the memory budget cannot hold."""
import numpy as np
import pytest

from edgelora.core import bookkeeping
from edgelora.core.bookkeeping import check_budget, compact_labels, index_dtype, label_dtype
from edgelora.runtime.backbone import Backbone
from edgelora.runtime.cache import SkipCache
from edgelora.runtime.cache_index import KeyIndex, key_array
from edgelora.runtime.train_config import TrainConfig, validation_split


def test_indices_are_int32_below_2_31_and_labels_the_smallest_integer():
    assert index_dtype(0) == index_dtype(2**31) == np.int32 and index_dtype(2**31 + 1) == np.int64
    assert [label_dtype(c) for c in (2, 128, 129, 32768, 32769, 2**31 + 1)] == \
        [np.int8, np.int8, np.int16, np.int16, np.int32, np.int64]
    y = np.array([0, 9, 3], np.int64)
    small = compact_labels(y, "classification", 10)
    assert small.dtype == np.int8 and small.tolist() == [0, 9, 3]
    reg = np.zeros((3, 2), np.float32)
    assert compact_labels(reg, "regression", 2) is reg


def test_the_bookkeeping_arrays_take_their_counted_bytes():
    n = 1000
    train, val = validation_split(np.arange(n) % 4, 0.0, "tail", 0, "classification")
    assert train.dtype == val.dtype == np.int32
    train, val = validation_split(np.arange(n) % 4, 0.2, "tail", 0, "classification")
    assert train.dtype == val.dtype == np.int32 and len(train) + len(val) == n
    assert validation_split(np.arange(n) % 4, 0.2, "random", 0, "classification")[0].dtype == np.int32
    keys = key_array(np.random.default_rng(0).integers(0, 256, (n, 16), dtype=np.uint8)).copy()
    index = KeyIndex(keys[:600])
    index.add(keys[600:], 600)
    rows = index.find(keys)
    assert rows.dtype == np.int32 and rows.tolist() == list(range(n))
    assert index._hi.nbytes + index._lo.nbytes + index._row.nbytes == n * bookkeeping.bytes_per_row(n) == n * 20
    labels = compact_labels(np.arange(n) % 10, "classification", 10)
    # the row of each sample, its train/val index, the epoch's permutation and the shuffled indices; one byte a label
    assert bookkeeping.bytes_per_sample(n, labels) == 4 * 4 + 1
    assert bookkeeping.bytes_per_sample(n, np.zeros((n, 3), np.float32)) == 4 * 4 + 12


def test_error_bookkeeping_above_the_budget_names_samples_bytes_need_budget_and_the_smallest_that_works():
    n, labels = 1_000_000, np.zeros(1_000_000, np.int8)
    with pytest.raises(ValueError) as e:
        check_budget(n, labels, n, 16 * 2**20)
    said = str(e.value)
    assert "\n" not in said and "--memory-budget 16 MB is too small for 1,000,000 samples" in said, said
    assert "needs 35.3 MB (cache index, labels, indices, the shuffle: 37.0 bytes a sample)" in said, said
    assert "at most 1/2 of the budget" in said, said
    assert "cache clear" not in said, said                   # no row was cached before: not the remedy
    smallest = int(said.split("use --memory-budget ")[1].split()[0])
    assert smallest == 71
    check_budget(n, labels, n, smallest * 2**20)             # the budget it names is enough
    with pytest.raises(ValueError):
        check_budget(n, labels, n, (smallest - 1) * 2**20)   # and the smallest
    check_budget(n, labels, n, None)                         # no budget: nothing checked


def test_a_warm_cache_counts_only_the_samples_it_does_not_hold(toy_bundle, toy_data, tmp_path):
    """Samples already cached add no index rows: a re-run of the same samples fits where new ones would not."""
    from edgelora.files.data import as_inputs
    bb = Backbone(toy_bundle)
    x, y = toy_data
    inputs, labels = as_inputs(x, bb.manifest), compact_labels(y, "classification", 3)
    SkipCache(bb, tmp_path).rows(inputs, validated=True)            # 120 rows cached on disk
    n = len(y)
    old = bookkeeping.BUDGET_SHARE * bookkeeping.need(n, labels, n)  # the index of 120 rows
    budget = old + 100                                               # not that of 240
    SkipCache(bb, tmp_path, memory_budget=budget).check_budget(inputs, labels)
    other = as_inputs(x + 1, bb.manifest)
    with pytest.raises(ValueError, match="too small for 120 samples") as e:
        SkipCache(bb, tmp_path, memory_budget=budget).check_budget(other, labels)
    said = str(e.value)   # the rows cached before are named apart, with the way to fewer of them
    assert "index of the 120 rows cached before" in said and "edgelora cache clear" in said, said
    from edgelora.runtime.features import FeatureSource
    lazy = FeatureSource.from_cache(SkipCache(bb, tmp_path, memory_budget=1000), inputs, chunk=50)
    assert lazy.lazy and lazy.values.rows.dtype == np.int32 and lazy.values.rows.tolist() == list(range(n))


def test_error_finetune_refuses_the_budget_before_the_backbone_runs(toy_bundle, toy_data, tmp_path, capsys):
    from edgelora.cli import main
    x, y = toy_data
    np.savez(tmp_path / "d.npz", x=x, y=y)
    code = main(["finetune", str(toy_bundle), "--data", str(tmp_path / "d.npz"), "--out", str(tmp_path / "ad"),
                 "--cache-dir", str(tmp_path / "c"), "--memory-budget", "0.005"])
    err = capsys.readouterr().err
    assert code == 2 and "too small for 120 samples" in err and "use --memory-budget 0.01 or more" in err, err
    assert not (tmp_path / "ad").exists() and not any(p.stat().st_size for p in (tmp_path / "c").glob("*/*-*.bin"))
    cfg = TrainConfig(epochs=1)
    from edgelora.runtime.train import finetune
    with pytest.raises(ValueError, match="too small for 120 samples"):
        finetune(Backbone(toy_bundle), x, y, cfg, cache=SkipCache(Backbone(toy_bundle), memory_budget=5000))
