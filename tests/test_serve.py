"""Serving many adapters: per-row adapters, one backbone pass, LRU budget, hot pickup of new versions."""
import threading
import time

import numpy as np
import pytest

from edgelora import Backbone, Predictor, TrainConfig, finetune
from edgelora.ops.serve import AdapterServer, ServeConfig
from edgelora.ops.store import AdapterStore
from tests.helpers import BackboneCounter

LIVE = ServeConfig(poll_seconds=0.0)


@pytest.fixture
def bb(toy_bundle):
    return Backbone(toy_bundle)


@pytest.fixture
def adapters(bb, toy_data):
    """Four different trained adapters (different seeds and label permutations)."""
    x, y = toy_data
    return [finetune(bb, x, (y + i) % 3, TrainConfig(epochs=4, batch_size=10, seed=i, weight_decay=0.0))[0]
            for i in range(4)]


@pytest.fixture
def store(tmp_path, adapters):
    s = AdapterStore(tmp_path / "store")
    for i, a in enumerate(adapters):
        s.set_current(f"m{i}", s.add_version(f"m{i}", a, parent=None, samples=1).version)
    return s


def expected(bb, adapter, x):
    return Predictor(bb, adapter).outputs(x)


def test_mixed_batch_runs_the_backbone_once_and_applies_each_rows_adapter(bb, store, adapters, toy_data):
    x = toy_data[0][:40]
    names = [None if i % 5 == 4 else f"m{i % 4}" for i in range(40)]
    server = AdapterServer(bb, store, LIVE)
    ran = BackboneCounter(bb)
    out = server.outputs(x, names)
    assert ran.samples == 40                                               # one backbone pass over the batch
    for i, name in enumerate(names):
        ref = expected(bb, None if name is None else adapters[int(name[1])], x[i:i + 1])[0]
        np.testing.assert_allclose(out[i], ref, atol=1e-5)
    np.testing.assert_allclose(server.outputs(x, "m2"), expected(bb, adapters[2], x), atol=1e-5)
    assert server.predict(x, names).shape == (40,) and np.allclose(server.predict_proba(x, names).sum(1), 1)


def test_grouped_path_for_many_or_large_adapters_matches(bb, store, adapters, toy_data, monkeypatch):
    from edgelora.ops import serve, served
    monkeypatch.setattr(serve, "STACK_MAX_COLUMNS", 0)     # force the group-by path
    monkeypatch.setattr(served, "MERGE_MAX_BYTES", 0)      # and lora.forward instead of merged weights
    x = toy_data[0][:30]
    names = [f"m{i % 4}" for i in range(30)]
    out = AdapterServer(bb, store, ServeConfig(poll_seconds=0, batch_size=7)).outputs(x, names)
    for i, name in enumerate(names):
        np.testing.assert_allclose(out[i], expected(bb, adapters[int(name[1])], x[i:i + 1])[0], atol=1e-5)


def test_new_version_is_picked_up_without_restart(bb, store, adapters, toy_data):
    x = toy_data[0][:5]
    server = AdapterServer(bb, store, LIVE)
    session = server.backbone._session
    np.testing.assert_allclose(server.outputs(x, "m0"), expected(bb, adapters[0], x), atol=1e-5)
    store.set_current("m0", store.add_version("m0", adapters[3], parent=1, samples=1).version)
    np.testing.assert_allclose(server.outputs(x, "m0"), expected(bb, adapters[3], x), atol=1e-5)
    store.rollback("m0")
    assert server.version("m0") == 1 and server.backbone._session is session   # backbone never reloaded
    assert server.stats()["reloads"] == 2


def test_polling_interval_and_refresh(bb, store, adapters, toy_data):
    server = AdapterServer(bb, store, ServeConfig(poll_seconds=3600))
    assert server.version("m0") == 1
    store.set_current("m0", store.add_version("m0", adapters[2], parent=1, samples=1).version)
    assert server.version("m0") == 1                                        # not checked again yet
    server.refresh("m0")
    assert server.version("m0") == 2


def test_lru_keeps_loaded_adapters_within_the_memory_budget(bb, store, adapters, toy_data):
    x = toy_data[0][:4]
    one = AdapterServer(bb, store, LIVE)
    one.outputs(x, "m0")
    size = one.stats()["bytes"]
    server = AdapterServer(bb, store, ServeConfig(poll_seconds=0, memory_budget=2 * size))
    for name in ["m0", "m1", "m0", "m2", "m3"]:
        server.outputs(x, name)
    stats = server.stats()
    assert list(stats["loaded"]) == ["m2", "m3"] and stats["bytes"] <= 2 * size and stats["evictions"] >= 2
    server.outputs(x, ["m0", "m1", "m2", "m3"])                             # one request may exceed it
    assert len(server.stats()["loaded"]) == 4
    server.outputs(x, "m0")
    assert server.stats()["bytes"] <= 2 * size


def test_reader_never_sees_a_half_written_adapter(bb, store, adapters, toy_data):
    x = toy_data[0][:8]
    outputs = [expected(bb, a, x) for a in adapters]
    stop, seen, errors, published = threading.Event(), set(), [], []

    def publish():
        i = 0
        while not stop.is_set():
            i += 1
            info = store.add_version("m0", adapters[i % 4], parent=None, samples=1)
            store.set_current("m0", info.version)
            store.prune("m0", keep=2)
            published.append(info.version)

    writer = threading.Thread(target=publish)
    writer.start()
    try:
        server = AdapterServer(Backbone(bb.bundle_dir), store, LIVE)
        deadline = time.monotonic() + 20
        while (len(published) < 10 or len(seen) < 2) and time.monotonic() < deadline:
            out = server.outputs(x, "m0")
            match = [k for k, ref in enumerate(outputs) if np.allclose(out, ref, atol=1e-5)]
            if not match:
                errors.append(out)
            seen.update(match)
    finally:
        stop.set()
        writer.join()
    assert not errors and len(seen) >= 2


def test_a_corrupt_new_version_keeps_the_old_one_serving(bb, store, adapters, toy_data):
    x = toy_data[0][:3]
    server = AdapterServer(bb, store, LIVE)
    server.outputs(x, "m1")
    info = store.add_version("m1", adapters[0], parent=1, samples=1)
    weights = store.version_dir("m1", info.version) / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])
    store.set_current("m1", info.version)
    with pytest.warns(UserWarning, match="keeps serving"):
        out = server.outputs(x, "m1")
    np.testing.assert_allclose(out, expected(bb, adapters[1], x), atol=1e-5)
    assert server.stats()["failed_reloads"] == 1


def test_error_unknown_or_unpublished_adapter(bb, store, adapters, toy_data):
    x = toy_data[0][:3]
    server = AdapterServer(bb, store, LIVE)
    with pytest.raises(FileNotFoundError, match="no adapter named 'nobody'"):
        server.outputs(x, "nobody")
    store.add_version("fresh", adapters[0], parent=None, samples=1)        # a version, but none published
    with pytest.raises(FileNotFoundError, match="no published version"):
        server.outputs(x, "fresh")
    shared = AdapterServer(bb, store, ServeConfig(poll_seconds=0, missing="shared"))
    np.testing.assert_allclose(shared.outputs(x, ["fresh", "m0", None]),
                               np.stack([expected(bb, None, x)[0], expected(bb, adapters[0], x)[1],
                                         expected(bb, None, x)[2]]), atol=1e-5)
    with pytest.raises(ValueError, match="one adapter name per row"):
        server.outputs(x, ["m0", "m1"])
    with pytest.raises(ValueError, match="not allowed"):
        server.outputs(x, "../m0")
    with pytest.raises(ValueError, match="memory_budget"):
        ServeConfig(memory_budget=0)
