"""device_bench/shifts.py and logmel.py: the shift protocols build what they declare on the real datasets
(shapes, the shift applied, fine-tune pool and test disjoint, deterministic per seed)."""
import numpy as np
import pytest

from device_bench import logmel, shifts
from device_bench.protocols import DATASETS
from tests.helpers import no_datasets

har_data = pytest.mark.skipif(not (DATASETS / "hapt_raw").is_dir(), reason=no_datasets(DATASETS / "hapt_raw"))
fsdd_data = pytest.mark.skipif(not (DATASETS / "fsdd").is_dir(), reason=no_datasets(DATASETS / "fsdd"))


@pytest.fixture(scope="module")
def har():
    return shifts.har_mount()


@pytest.fixture(scope="module")
def fsdd():
    with np.load(DATASETS / "fsdd" / "fsdd.npz", allow_pickle=False) as d:
        rows = np.arange(0, 3000, 150)
        return {"clips": logmel.clips(d, rows), "logmel": d["logmel"][rows].astype(np.float32)}


def test_rotation_is_a_rotation_by_the_declared_angle():
    r = shifts.rotation((0.2, 0.3, 1.0), 80.0)
    assert np.allclose(r @ r.T, np.eye(3)) and np.isclose(np.linalg.det(r), 1.0)
    assert np.isclose(np.degrees(np.arccos((np.trace(r) - 1) / 2)), 80.0)


@har_data
def test_har_mount_applies_the_declared_mount(har):
    p = har["shift"]
    for split in ("source", "pool", "test"):
        assert har[split][0].shape[1:] == (128, 6) and har[split][0].dtype == np.float32
    shifted, clean = har["test"][0], har["test_clean"][0]
    assert np.abs(shifted - clean).mean() > 0.1                    # it did shift
    r = shifts.rotation(p["axis"], p["rotation_deg"])               # undo gain, offset and rotation: the noise is left
    acc = ((shifted[..., :3] - p["acc_offset_g"]) / p["acc_gain"]) @ r
    gyro = ((shifted[..., 3:] - p["gyro_offset"]) / p["gyro_gain"]) @ r
    assert (acc - clean[..., :3]).std() == pytest.approx(p["noise_acc_g"] / np.mean(p["acc_gain"]), rel=0.15)
    assert np.abs(gyro - clean[..., 3:]).max() < 6 * p["noise_gyro"]


@har_data
def test_har_mount_splits_are_disjoint_and_source_users_are_others(har):
    rows = har["rows"]
    assert not set(rows["pool"]) & set(rows["test"]) and not set(rows["source"]) & (set(rows["pool"]) | set(rows["test"]))
    with np.load(DATASETS / "hapt_raw" / "hapt_raw_w128.npz", allow_pickle=False) as d:
        subj, exp, start = d["subject"], d["experiment"], d["start_sample"]
        assert not set(subj[rows["source"]]) & set(subj[rows["test"]])
        for u in np.unique(subj[rows["test"]]):                   # each user's pool comes before its test in time
            last_pool = max(zip(exp[rows["pool"]][subj[rows["pool"]] == u], start[rows["pool"]][subj[rows["pool"]] == u]))
            first_test = min(zip(exp[rows["test"]][subj[rows["test"]] == u], start[rows["test"]][subj[rows["test"]] == u]))
            assert last_pool < first_test


@har_data
def test_draw_is_deterministic_per_seed_and_balanced(har):
    y = har["pool"][1]
    a, b, c = shifts.draw(y, 5, 0), shifts.draw(y, 5, 0), shifts.draw(y, 5, 1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.array_equal(np.bincount(y[a]), [5] * 6) and len(set(a)) == 30 and a.max() < len(y)
    assert np.array_equal(shifts.mount(har["test_clean"][0][:4], har["shift"], np.random.default_rng(3)),
                          shifts.mount(har["test_clean"][0][:4], har["shift"], np.random.default_rng(3)))


def test_error_draw_names_what_is_missing():
    with pytest.raises(ValueError, match="class 1 has 2 samples in the fine-tune pool, fewer than 3 shots"):
        shifts.draw(np.array([0, 0, 0, 1, 1]), 3, 0)
    with pytest.raises(ValueError, match="positive number of samples per class, found 0"):
        shifts.draw(np.array([0, 1]), 0, 0)
    with pytest.raises(ValueError, match="unknown shift protocol 'har'; expected one of"):
        shifts.build("har")
    with pytest.raises(ValueError, match=r"expected one-second signals of shape \(N, 8000\), found \(2, 10\)"):
        logmel.logmel(np.zeros((2, 10)))


@fsdd_data
def test_logmel_recomputes_the_stored_features(fsdd):
    assert np.abs(logmel.logmel(fsdd["clips"]) - fsdd["logmel"]).max() < 0.01


@fsdd_data
def test_late_clock_moves_the_word_later_with_gain_and_offset(fsdd):
    p = shifts.SHIFTS["series-clock"]
    late = shifts.late_clock(fsdd["clips"], p)
    k = int(p["delay_s"] * logmel.RATE)
    assert np.allclose(late[:, k:], fsdd["clips"][:, :-k] * p["gain"] + p["dc_offset"])
    assert np.allclose(late[:, :k], p["dc_offset"])
    assert shifts.coarse(late).shape == (len(late), 49, 20)


@fsdd_data
def test_microphone_band_limits_and_adds_noise(fsdd):
    p = shifts.SHIFTS["fsdd-mic"]
    x = fsdd["clips"]
    y = shifts.microphone(x, {**p, "noise_rms": 0.0}, np.random.default_rng(0))
    f = np.fft.rfftfreq(x.shape[1], 1 / logmel.RATE)
    band = lambda s, lo, hi: (np.abs(np.fft.rfft(s, axis=1))[:, (f >= lo) & (f < hi)] ** 2).sum()  # noqa: E731
    kept = band(y, 800, 1500) / band(x, 800, 1500)
    assert band(y, 50, 150) / band(x, 50, 150) < kept / 100                 # far below the band: cut
    noisy = shifts.microphone(x, p, np.random.default_rng(0))
    assert np.allclose(noisy, shifts.microphone(x, p, np.random.default_rng(0)))     # deterministic per seed
    assert np.std(noisy - y) == pytest.approx(p["noise_rms"], rel=0.05)


@fsdd_data
def test_fsdd_splits_are_disjoint_takes_and_only_the_device_side_is_shifted():
    d = shifts._fsdd("fsdd-mic", lambda s, rng: s + 1.0, lambda s: s[:, ::400])   # cheap stand-ins, same split
    with np.load(DATASETS / "fsdd" / "fsdd.npz", allow_pickle=False) as f:
        take = f["take"]
    rows = d["rows"]
    assert (take[rows["source"]] >= 10).all() and set(take[rows["pool"]]) == set(range(5, 10))
    assert set(take[rows["test"]]) == set(range(5)) and len(rows["pool"]) == len(rows["test"]) == 300
    assert np.allclose(d["test"][0], d["test_clean"][0] + 1.0) and len(d["source"][0]) == 2400
