"""Smoke run of device_bench.personalize_har (the full scenario stays out of CI): 1 user, a random backbone."""
import json

import numpy as np
import pytest

from device_bench.protocols import DATASETS
from edgelora import TrainConfig
from edgelora.ops.personalize import PersonalizeConfig
from tests.helpers import mlp_bundle, no_datasets, random_mlp

pytestmark = pytest.mark.skipif(not (DATASETS / "hapt_raw").is_dir(), reason=no_datasets(DATASETS / "hapt_raw"))


def gate_verdict(record: dict, config: PersonalizeConfig) -> str:
    """What personalize must decide from the figures it recorded: the label check, then the holdout gate."""
    implausible = record["implausible_labels"]
    if implausible is not None and implausible > config.max_implausible:
        return "rejected"
    worse = record["gate_reference"]["accuracy"] - record["gate"]["accuracy"]
    return "rejected" if worse > config.margin + 1e-12 else "published"


def test_har_scenario_smoke(tmp_path):
    from device_bench import personalize_har
    mlp_bundle(tmp_path / "bundle", random_mlp([768, 16, 6]), [str(i) for i in range(6)])
    cfg = PersonalizeConfig(train=TrainConfig(epochs=2))
    result = personalize_har.run(tmp_path / "out", "scramble", tmp_path / "bundle", users=[2], config=cfg, log=lambda *a: None)
    records = {r["step"]: r for r in result["records"]}
    assert list(records) == ["day 1", "day 2", "bad", "day 3", "day 4"]
    assert records["day 1"]["decision"] == "deferred"     # 8 holdout samples, fewer than min_holdout 10
    assert records["day 3"]["decision"] == "unchanged"    # the bad delivery brought day 3's inputs already
    assert records["bad"]["wrong_labels"] == 1.0
    for step in ("day 2", "bad", "day 4"):                # the gate decided: its verdict follows its own figures
        assert records[step]["decision"] == gate_verdict(records[step], cfg), records[step]
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["summary"]["bad_deliveries"] == 1 and 0 <= saved["summary"]["mean_test_accuracy"]["day 4"] <= 1
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| mean |" in md and "Bad delivery" in md
    assert np.isfinite(saved["summary"]["mean_seconds_per_session"])
