"""device_bench.personalize_har (the full scenario stays out of CI): a smoke run on a random backbone, and one
user on the reference MLP, where the bad delivery must be rejected for what its data shows."""
import json

import numpy as np
import pytest

from device_bench.protocols import DATASETS
from edgelora import Backbone, Predictor, TrainConfig
from edgelora.ops.personalize import PersonalizeConfig
from edgelora.ops.samples import Samples
from edgelora.ops.store import AdapterStore
from tests.helpers import mlp_bundle, no_datasets, random_mlp

pytestmark = pytest.mark.skipif(not (DATASETS / "hapt_raw").is_dir(), reason=no_datasets(DATASETS / "hapt_raw"))


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
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["summary"]["bad_deliveries"] == 1 and 0 <= saved["summary"]["mean_test_accuracy"]["day 4"] <= 1
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| mean |" in md and "Bad delivery" in md
    assert np.isfinite(saved["summary"]["mean_seconds_per_session"])


@pytest.mark.torch
def test_the_bad_delivery_is_rejected_by_the_gates_rule_recomputed_from_the_store(tmp_path):
    from device_bench import personalize_har, protocols
    from device_bench.backbones import reference_bundle
    bundle = reference_bundle("har", protocols.har(), tmp_path / "bundles", prefer_exported=False)
    cfg = PersonalizeConfig()
    result = personalize_har.run(tmp_path / "out", "scramble", bundle, users=[2], config=cfg, log=lambda *a: None)
    records = {r["step"]: r for r in result["records"]}
    serving, candidate = records["day 2"]["current"], records["bad"]["version"]
    assert records["bad"]["decision"] == "rejected" and records["bad"]["current"] == serving
    # the gate's rule, evaluated here on the store's own data: the bad delivery is session 3; the verified
    # holdout is the holdout of the sessions before it
    store, backbone = AdapterStore(tmp_path / "out" / "store"), Backbone(bundle)
    data = Samples.load(store.adapter_dir("user-02") / "data", backbone.manifest)
    verified, bad = data.holdout & np.isin(data.session, [1, 2]), data.session == 3
    assert verified.sum() >= cfg.min_holdout and bad.sum() > 0
    now = Predictor(backbone, store.load("user-02", serving))
    worse = now.evaluate(data.inputs_at(verified), data.y[verified])["accuracy"] - Predictor(
        backbone, store.load("user-02", candidate)).evaluate(data.inputs_at(verified), data.y[verified])["accuracy"]
    p = now.predict_proba(data.inputs_at(bad))[np.arange(bad.sum()), data.y[bad]]
    implausible = float((p < cfg.implausible_p).mean())
    assert worse > cfg.margin or implausible > cfg.max_implausible, (worse, implausible)
