import importlib.util
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tests.helpers import mlp_bundle, random_mlp  # noqa: E402

HAS_TORCH = importlib.util.find_spec("torch") is not None   # without importing it (seconds, hundreds of MB)


def pytest_configure(config):
    config.addinivalue_line("markers", "torch: needs torch (the export extra); skipped, saying so, without it. "
                                       "The device side never needs it: `-m 'not torch'` is the device's suite")


def pytest_collection_modifyitems(config, items):
    if HAS_TORCH:
        return
    skip = pytest.mark.skip(reason="needs torch, which is not installed (from the clone: pip install -e '.[export]', "
                                   "or ./run test)")
    for item in items:
        if item.get_closest_marker("torch"):
            item.add_marker(skip)


@pytest.fixture
def toy_bundle(tmp_path):
    """A 10 -> 8 -> 8 -> 3 random MLP bundle with standardisation in the manifest."""
    folder = tmp_path / "bundle"
    mlp_bundle(folder, random_mlp([10, 8, 8, 3]), ["a", "b", "c"], mean=np.full(10, 0.5), std=np.full(10, 2.0))
    return folder


@pytest.fixture
def toy_data():
    """Three Gaussian blobs in 10-D, 120 samples; labels 0..2."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 10)) * 3
    y = np.repeat(np.arange(3), 40)
    x = (centres[y] + rng.standard_normal((120, 10))).astype(np.float32)
    return x, y


@pytest.fixture(scope="module")
def demo():
    """The demo's digit scans (cli/demo_data.splits(0)): lab, fine-tune (the new scanner) and test splits."""
    pytest.importorskip("sklearn", reason="the demo digits come from scikit-learn (test extra)")
    from edgelora.cli.demo_data import splits
    return splits(0)
