"""Tap scaling: one definition of the standardised taps, for cross-validation and the refit."""
import numpy as np
import pytest

from edgelora.core.scaling import scaled, standardizer


def test_standard_taps_have_zero_mean_unit_spread_and_constant_features_stay_zero():
    rng = np.random.default_rng(0)
    t = (rng.standard_normal((50, 4)) * 3 + 7).astype(np.float32)
    t[:, 2] = 5.0                                                   # a constant feature
    std = standardizer(lambda idx: (None, t[idx]), len(t), chunk=16)
    s = scaled(t, "standard", std)
    assert np.abs(s.mean(axis=0)).max() < 1e-5 and np.allclose(s.std(axis=0)[[0, 1, 3]], 1.0, atol=1e-4)
    assert not s[:, 2].any()
    out = np.empty_like(t)
    assert scaled(t, "standard", std, out=out) is out and np.array_equal(out, (t - std[0]) * std[1])
    assert scaled(t, "none", std) is t and np.array_equal(scaled(t, "none", std, out=out), t)


def test_error_unknown_scaling_names_the_choices():
    with pytest.raises(ValueError, match=r"`tap_scaling` should be one of \('none', 'standard'\), found 'z'"):
        scaled(np.zeros((2, 2), np.float32), "z", (np.zeros(2), np.ones(2)))
