"""Smoke run of device_bench.serving (full timings stay out of CI): tiny rounds, every figure present."""
import pytest

from device_bench.protocols import DATASETS
from tests.helpers import no_datasets

pytestmark = pytest.mark.skipif(not (DATASETS / "cooling_fan").is_dir(), reason=no_datasets(DATASETS / "cooling_fan"))


@pytest.mark.torch
def test_serving_benchmark_smoke(tmp_path, monkeypatch):
    from device_bench import serving
    monkeypatch.setattr(serving, "BUNDLES", tmp_path / "bundles")
    monkeypatch.setattr(serving, "CALLS", {1: 20, serving.BATCH: 5})
    monkeypatch.setattr(serving, "LOADS", 3)
    r = serving.run(tmp_path / "out", rounds=1)
    assert r["switch"]["backbone_session_unchanged"] and r["switch"]["adapter_loads"] == serving.ADAPTERS
    assert set(r["targets"]) == {"adapter overhead at batch 1 <= 10 % of backbone time",
                                 "loading an adapter from disk <= 2 ms", "switching reloads nothing of the backbone",
                                 "64 rows over 8 adapters <= 1.2 x 64 rows on one"}
    limits = {"adapter overhead at batch 1 <= 10 % of backbone time": lambda v: v <= 0.10,
              "loading an adapter from disk <= 2 ms": lambda v: v <= 2.0,
              "switching reloads nothing of the backbone": lambda v: v is True,
              "64 rows over 8 adapters <= 1.2 x 64 rows on one": lambda v: v <= 1.2}
    lines = (tmp_path / "out" / "results.md").read_text().splitlines()
    for name, (value, ok) in r["targets"].items():
        assert ok == limits[name](value), (name, value, ok)           # each verdict is its figure against its limit
        verdict = f"{'PASS' if ok else 'MISS'}  {name}: "
        assert sum(line.startswith(verdict) for line in lines) == 1, (verdict, lines[-6:])
