"""Smoke run of device_bench.personalize_har (the full scenario stays out of CI): 1 user, a random backbone."""
import json

import numpy as np
import pytest

from device_bench.protocols import DATASETS
from edgelora import TrainConfig
from edgelora.ops.personalize import PersonalizeConfig
from tests.helpers import mlp_bundle, no_datasets, random_mlp

pytestmark = pytest.mark.skipif(not (DATASETS / "hapt_raw").is_dir(), reason=no_datasets(DATASETS / "hapt_raw"))


def test_har_scenario_smoke(tmp_path):
    from device_bench import personalize_har
    mlp_bundle(tmp_path / "bundle", random_mlp([768, 16, 6]), [str(i) for i in range(6)])
    cfg = PersonalizeConfig(train=TrainConfig(epochs=2))
    result = personalize_har.run(tmp_path / "out", "scramble", tmp_path / "bundle", users=[2], config=cfg, log=lambda *a: None)
    steps = [r["step"] for r in result["records"]]
    assert steps == ["day 1", "day 2", "bad", "day 3", "day 4"]
    bad = result["records"][2]
    assert bad["wrong_labels"] == 1.0 and bad["decision"] in ("rejected", "published", "deferred")
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["summary"]["bad_deliveries"] == 1 and 0 <= saved["summary"]["mean_test_accuracy"]["day 4"] <= 1
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| mean |" in md and "Bad delivery" in md
    assert np.isfinite(saved["summary"]["mean_seconds_per_session"])
