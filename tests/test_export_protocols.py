"""device_bench.protocols.fsdd / mnist: the splits of ../shared/datasets/README.md (used by device_bench.reference)."""
from __future__ import annotations

import numpy as np
import pytest

from device_bench import protocols
from tests.helpers import no_datasets

pytestmark = pytest.mark.skipif(not (protocols.DATASETS / "fsdd").is_dir() or not (protocols.DATASETS / "mnist_test").is_dir(),
                                reason=no_datasets(protocols.DATASETS / "fsdd or mnist_test"))


def test_fsdd_leaves_one_speaker_out():
    d = protocols.fsdd(5)
    (xs, ys), (xf, yf), (xt, yt) = d["source"], d["finetune"], d["test"]
    assert xs.shape == (2500, 98, 40) and xf.shape == (450, 98, 40) and xt.shape == (50, 98, 40)
    assert xs.dtype == np.float32 and d["speaker"] == "yweweler"
    assert np.bincount(yt).tolist() == [5] * 10 and np.bincount(yf).tolist() == [45] * 10
    assert d["mean"].shape == (1, 40) and (d["std"] > 0).all()
    z = (xs - d["mean"]) / d["std"]
    np.testing.assert_allclose(z.mean(axis=(0, 1)), 0, atol=1e-3)
    with pytest.raises(ValueError, match="speaker index 0..5"):
        protocols.fsdd(6)


def test_mnist_writer_groups():
    d = protocols.mnist()
    (xs, _), (xf, _), (xt, _) = d["source"], d["finetune"], d["test"]
    assert xs.shape == (5000, 28, 28) and xf.shape == (2500, 28, 28) and xt.shape == (2500, 28, 28)
    assert 0.0 <= xs.min() and xs.max() <= 1.0 and d["mean"].shape == () and float(d["std"]) > 0
