"""Fleets under attack (edgelora.fleet.robust, evaluation, update checks, device checks): one test per
attack a well-formed but hostile participant can mount, on Flower's in-process grid."""
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr", reason="the fleet needs Flower: from the clone, pip install -e '.[fleet]' (or ./run test)")

from edgelora import Backbone, Predictor, load_adapter  # noqa: E402
from edgelora.fleet.device import FleetDevice, RoundSettings  # noqa: E402
from edgelora.fleet.local_grid import LocalGrid  # noqa: E402
from edgelora.fleet.server_app import run_fleet  # noqa: E402
from edgelora.fleet.settings import FleetSettings  # noqa: E402
from edgelora.fleet.update import check_update, encode_update, flat_sha256, initial_adapter  # noqa: E402
from device_bench import faulty_client  # noqa: E402

from tests.fleet_helpers import BUNDLE, MANIFEST, SPEC, device_nodes  # noqa: E402


def fleet(root: Path, demo, faults=(), rounds=2, evaluate=False, min_clients=4, **settings):
    """4 honest devices (a quarter of the demo's new-scanner scans each), then one device per fault (with half
    of an honest device's scans: its honest update differs from every other device's)."""
    root.mkdir()
    nodes = device_nodes(root, demo, faults=faults, fault_stride=8)
    s = FleetSettings(bundle=str(BUNDLE), out=str(root / "shared"), num_rounds=rounds, min_clients=min_clients,
                      evaluate=evaluate, round=RoundSettings(local_epochs=3), **settings)
    return run_fleet(LocalGrid(faulty_client.app, nodes), s)


def accuracy(root: Path, demo) -> float:
    backbone = Backbone(BUNDLE)
    return Predictor(backbone, load_adapter(root / "shared", MANIFEST)).evaluate(*demo["test"])["accuracy"]


@pytest.fixture(scope="module")
def honest(tmp_path_factory, demo):
    root = tmp_path_factory.mktemp("honest") / "fleet"
    fleet(root, demo)
    return accuracy(root, demo)


def test_robust_rules_bound_weight_and_size_by_the_rounds_own_statistics():
    from edgelora.fleet.robust import RobustRule, cap_samples, clip_norms, trimmed_mean
    assert cap_samples([10, 20, 30, 10**6], 3.0) == [10, 20, 30, 75.0]
    rng = np.random.default_rng(0)
    ups = [rng.standard_normal(50) for _ in range(5)] + [1000 * rng.standard_normal(50)]
    clipped, norms = clip_norms(ups, 3.0)
    assert np.linalg.norm(clipped[-1]) == pytest.approx(3 * np.median(norms))
    np.testing.assert_array_equal(clipped[0], ups[0])
    assert trimmed_mean([np.array([v]) for v in (1.0, 2.0, 3.0, 1e9)], 0.25)[0] == 2.5
    for rule in ("mean", "median", "trimmed"):
        mean, info = RobustRule(rule)(ups, [10] * 5 + [10**6])
        assert np.linalg.norm(mean) < 2 * max(np.linalg.norm(u) for u in ups[:5]), rule
    with pytest.raises(ValueError, match="aggregation"):
        RobustRule("krum")


@pytest.mark.parametrize("attack", ["liar", "bias", "scale"])
def test_a_poisoning_device_cannot_move_the_shared_adapter_far(tmp_path, demo, honest, attack):
    """Table row 3: 10^6 claimed samples with a norm-999 bias update (or honest counts, or x50) used to take
    99.98 % of the weight and the shared adapter to chance."""
    log = fleet(tmp_path / attack, demo, faults=(attack,))
    assert accuracy(tmp_path / attack, demo) >= honest - 0.03
    assert all(r["accepted"] == 5 for r in log["rounds"])          # well formed: bounded, not rejected
    assert all(r["bounded"]["norms_clipped"] >= 1 for r in log["rounds"])


def test_evaluation_replies_are_checked_and_cannot_choose_the_kept_round(tmp_path, demo):
    """Table row 4: 10^9 samples with loss -1e30 chose the kept round; one NaN loss meant --out was never written."""
    clean = fleet(tmp_path / "clean", demo, rounds=3, evaluate=True)
    lying = fleet(tmp_path / "lie", demo, faults=("eval-lie",), rounds=3, evaluate=True)
    assert lying["best_round"] == clean["best_round"]
    nan = fleet(tmp_path / "nan", demo, faults=("eval-nan",), rounds=2, evaluate=True)
    assert (tmp_path / "nan" / "shared").is_dir() and nan["best_round"] is not None
    assert all("num-examples" in r["evaluate_rejected"][0]["reason"] for r in lying["rounds"])
    alone = fleet(tmp_path / "alone", demo, faults=("eval-nan",) * 4, rounds=1, evaluate=True, min_clients=8)
    assert alone["rounds"][0]["evaluate"]["loss"] >= 0             # the honest half still decides


def test_a_device_refuses_a_poisoned_shared_adapter_and_keeps_serving_its_last_good_one(tmp_path, demo):
    """Table row 5: a NaN (or 3e38) shared adapter was stored, and every later receive failed."""
    x, y = demo["finetune"]
    device = FleetDevice(BUNDLE, x[:60], y[:60], tmp_path / "dev")
    good = initial_adapter(MANIFEST, SPEC)
    device.receive(SPEC, good.flat, 1)
    nan, huge = good.flat.copy(), good.flat.copy()
    nan[3], huge[3] = np.nan, 3e38
    for bad, why in ((nan, "non-finite"), (huge, "norm")):
        with pytest.raises(ValueError, match=why):
            device.receive(SPEC, bad, 2)
        assert flat_sha256(device.latest_shared().flat) == flat_sha256(good.flat)   # still serving v1
    newer = good.flat * 0.5
    device.receive(SPEC, newer, 3)                                  # a later good one is kept as usual
    assert flat_sha256(device.latest_shared().flat) == flat_sha256(newer)
    assert len(device.store.versions("fleet")) == 2


def test_replayed_updates_are_refused(tmp_path, demo):
    """Table row 6: an earlier round's update sent again was accepted."""
    log = fleet(tmp_path / "replay", demo, faults=("replay",), rounds=3)
    assert log["rounds"][0]["accepted"] == 5
    for r in log["rounds"][1:]:
        assert r["accepted"] == 4 and "replayed" in r["rejected"][0]["reason"]
    u = encode_update(np.ones(SPEC.size, np.float32), np.zeros(SPEC.size, np.float32))
    meta = {"fingerprint": SPEC.fingerprint, "round": 3, "base": "sha256:" + "1" * 64}
    assert "replayed" in check_update(u, meta, SPEC, 3, 40, 1000, 1e3, base="sha256:" + "2" * 64)


def test_evaluation_checks_name_what_is_wrong_and_bound_what_is_well_formed():
    from edgelora.fleet.evaluation import check_metrics, out_of_bounds, robust_metrics
    meta = {"round": 2}
    assert check_metrics({"num-examples": 30, "loss": 0.3, "accuracy": 0.9}, meta, 2, 1000) is None
    assert "stale" in check_metrics({"num-examples": 30, "loss": 0.3}, {"round": 1}, 2, 1000)
    assert "num-examples" in check_metrics({"num-examples": 10**9, "loss": 0.3}, meta, 2, 1000)
    assert "loss" in check_metrics({"num-examples": 30, "loss": -1e30}, meta, 2, 1000)
    assert "loss" in check_metrics({"num-examples": 30, "loss": float("nan")}, meta, 2, 1000)
    assert "non-finite" in check_metrics({"num-examples": 30, "loss": 0.3, "accuracy": float("inf")}, meta, 2, 1000)
    records = [{"num-examples": 30, "loss": v} for v in (0.1, 0.2, 0.3, 1e30)]
    assert [why is not None for why in out_of_bounds(records)] == [False, False, False, True]
    heavy = [{"num-examples": 30, "loss": 0.02}] * 3 + [{"num-examples": 30, "loss": 1.5}]   # honest, har-like
    assert out_of_bounds(heavy) == [None] * 4
    lying = records[:3] + [{"num-examples": 1000, "loss": 0.0}]
    assert robust_metrics(lying, 3.0)["loss"] == pytest.approx((30 * 0.6 + 0) / 180)   # its count capped at 90
