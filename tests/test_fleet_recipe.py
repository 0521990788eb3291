"""A fleet started from an adapter trains that adapter's recipe (fleet/settings.py with_init_recipe), on the
demo's real digit scans: its shape, its recorded weight decay on every device; one re-calibrated on one
device is refused by name."""
from pathlib import Path

import pytest

pytest.importorskip("flwr", reason="the fleet needs Flower: from the clone, pip install -e '.[fleet]' (or ./run test)")

from edgelora import Backbone, TrainConfig, finetune  # noqa: E402
from edgelora.fleet.client_app import app as client_app  # noqa: E402
from edgelora.fleet.device import RoundSettings  # noqa: E402
from edgelora.fleet.local_grid import LocalGrid  # noqa: E402
from edgelora.fleet.server_app import run_fleet  # noqa: E402
from edgelora.fleet.settings import FleetSettings  # noqa: E402
from edgelora.ops.session_recipe import recorded_recipe  # noqa: E402
from tests.fleet_helpers import BUNDLE, device_nodes  # noqa: E402


def run(tmp_path, demo, init: Path, recipe: str) -> dict:
    root = tmp_path / recipe
    root.mkdir()
    settings = FleetSettings(bundle=str(BUNDLE), out=str(root / "shared"), num_rounds=1, min_clients=4,
                             init=str(init), recipe=recipe, round=RoundSettings(local_epochs=2))
    return run_fleet(LocalGrid(client_app, device_nodes(root, demo)), settings)


def test_devices_train_the_recorded_weight_decay_of_the_adapter_the_fleet_starts_from(tmp_path, demo):
    x, y = demo["finetune"]
    adapter, _ = finetune(Backbone(BUNDLE), x[:120], y[:120], TrainConfig(r=8, weight_decay="auto",
                                                                          weight_decay_grid=(0.0, 0.01)))
    adapter.save(tmp_path / "start")
    recorded = recorded_recipe(adapter)
    assert recorded["weight_decay"] != RoundSettings().weight_decay   # else the test could not tell
    log = run(tmp_path, demo, tmp_path / "start", "init")
    assert log["spec"]["r"] == 8 and log["settings"]["weight-decay"] == recorded["weight_decay"]
    assert log["rounds"][0]["accepted"] == 4
    assert run(tmp_path, demo, tmp_path / "start", "settings")["settings"]["weight-decay"] == RoundSettings().weight_decay


def test_error_an_adapter_recalibrated_on_one_device_cannot_start_a_fleet(tmp_path, demo):
    x, y = demo["finetune"]
    adapter, _ = finetune(Backbone(BUNDLE), x[:120], y[:120], TrainConfig(recalibrate="input"))
    assert adapter.config.recalibration is not None
    adapter.save(tmp_path / "start")
    with pytest.raises(ValueError, match="re-estimated on one device .*--recalibrate none"):
        run(tmp_path, demo, tmp_path / "start", "init")
