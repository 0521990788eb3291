"""Smoke run of device_bench.serving (full timings stay out of CI): tiny rounds, every figure present."""
import pytest

from device_bench.protocols import DATASETS
from tests.helpers import no_datasets

pytestmark = pytest.mark.skipif(not (DATASETS / "cooling_fan").is_dir(), reason=no_datasets(DATASETS / "cooling_fan"))


@pytest.mark.torch
def test_serving_benchmark_smoke(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from device_bench import serving
    monkeypatch.setattr(serving, "BUNDLES", tmp_path / "bundles")
    monkeypatch.setattr(serving, "CALLS", {1: 20, serving.BATCH: 5})
    monkeypatch.setattr(serving, "LOADS", 3)
    r = serving.run(tmp_path / "out", rounds=1)
    assert r["switch"]["backbone_session_unchanged"] and r["switch"]["adapter_loads"] == serving.ADAPTERS
    assert set(r["targets"]) == {"adapter overhead at batch 1 <= 10 % of backbone time",
                                 "loading an adapter from disk <= 2 ms", "switching reloads nothing of the backbone",
                                 "64 rows over 8 adapters <= 1.2 x 64 rows on one"}
    assert "PASS" in (tmp_path / "out" / "results.md").read_text() or "MISS" in (tmp_path / "out" / "results.md").read_text()
