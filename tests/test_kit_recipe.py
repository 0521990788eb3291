"""A kit built from the recipe numpy chose (edgelora/graphs/kit_recipe.py, `edgelora kit --recipe-of`)."""
import dataclasses
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgelora import Backbone, TrainConfig, finetune, load_adapter
from edgelora.cli import main
from edgelora.graphs.kit import KitRecipe, build_kit
from edgelora.graphs.kit_recipe import kit_recipe_of
from tests.helpers import js_client

CLI = Path(__file__).resolve().parent.parent / "clients" / "js" / "src" / "cli.js"


@pytest.fixture(scope="module")
def chosen(tmp_path_factory):
    """The demo's data and the adapter numpy's cross-validation chose (skip form, raw taps: what a kit trains)."""
    from edgelora.cli.demo import BUNDLE
    from edgelora.cli.demo_data import splits
    folder = tmp_path_factory.mktemp("recipe")
    s = splits(0)
    np.savez(folder / "finetune.npz", x=s["finetune"][0], y=s["finetune"][1])
    backbone = Backbone(BUNDLE)
    adapter, history = finetune(backbone, *s["finetune"], TrainConfig(form="skip", tap_scaling="none"))
    adapter.save(folder / "numpy")
    return backbone, BUNDLE, folder, adapter


def test_kit_of_the_chosen_recipe_reproduces_the_numpy_adapter(chosen):
    backbone, bundle, folder, adapter = chosen
    recipe, defaults = kit_recipe_of(adapter.config)
    pick = adapter.config.training["chosen"]
    assert (recipe.r, recipe.alpha, defaults["epochs"], defaults["weight_decay"]) == \
        (pick["r"], pick["lora_alpha"], pick["epochs"], pick["weight_decay"])
    assert main(["kit", str(bundle), "--out", str(folder / "kit"), "--recipe-of", str(folder / "numpy")]) == 0
    node = js_client()
    done = subprocess.run([node, str(CLI), "train", "--bundle", str(bundle), "--kit", str(folder / "kit"), "--data",
                           str(folder / "finetune.npz"), "--out", str(folder / "js"), "--backend", "wasm"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = load_adapter(folder / "js", backbone.manifest)
    assert got.config.r == adapter.config.r and np.abs(got.flat - adapter.flat).max() <= 1e-4
    assert np.abs(adapter.flat).max() > 0.05  # it learnt something


from edgelora.files.recalibration import Recalibration  # noqa: E402


def _config(chosen=None, **settings):
    base = {"batch_size": 20, "optimizer": "adamw", "epochs": 30, "weight_decay": 0.1, "lr": 3e-3, "seed": 0}
    training = {"chosen": {"r": 4, "lora_alpha": 8.0, "weight_decay": 0.1, "epochs": 20, "form": "skip",
                           "tap_scaling": "none", **(chosen or {})}, "settings": {**base, **settings}}
    from edgelora.files.adapter import AdapterConfig
    return AdapterConfig(backbone_fingerprint="sha256:" + "0" * 64, target_taps=("t",), tap_widths=(3,),
                         num_outputs=2, task="classification", training=training)


def test_error_recipes_a_kit_cannot_train_are_refused_by_name():
    assert kit_recipe_of(_config())[1]["epochs"] == 20
    for config, message in ((_config({"tap_scaling": "standardize"}), "tap_scaling='standardize' (expected 'none'"),
                            (_config({"form": "last"}), "form='last' (expected 'skip')"),
                            (_config({"tier": "deep", "form": "deep", "recalibration": "none"}),
                             "cannot reproduce a deep adapter (tier 'deep'"),
                            (_config({"input_gain": True}), "cannot reproduce the chosen input_gain=True"),
                            (_config(lora_dropout=0.1), "lora_dropout=0.1 (expected 0)"),
                            (dataclasses.replace(_config(), recalibration=Recalibration("input", 20)),
                             "recalibration='input' (expected none"),
                            (dataclasses.replace(_config(), training={}), "expected an adapter trained by edgelora")):
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            kit_recipe_of(config)


def test_error_recipe_flags_beside_recipe_of_are_refused(chosen, tmp_path, capsys):
    backbone, bundle, folder, _ = chosen
    assert main(["kit", str(bundle), "--out", str(tmp_path / "k"), "--recipe-of", str(folder / "numpy"), "--rank", "8"]) == 2
    assert "expected no recipe flags, found ['--rank']" in capsys.readouterr().err
    assert not (tmp_path / "k").exists()
    build_kit(backbone.manifest, KitRecipe()).save(tmp_path / "kit")
    before = json.loads((tmp_path / "kit" / "kit.json").read_text())
    assert main(["kit", str(bundle), "--out", str(tmp_path / "kit"), "--recipe-of", str(tmp_path / "kit")]) != 0
    assert json.loads((tmp_path / "kit" / "kit.json").read_text()) == before
