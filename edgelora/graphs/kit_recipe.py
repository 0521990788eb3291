"""The recipe a device chose, as a training kit: a numpy adapter's chosen settings -> KitRecipe + run defaults.

The numpy trainer picks rank, weight decay, epochs, form and tap scaling by cross-validation and records the
choice in the adapter (`training.chosen`, `training.settings`). A kit built from that record trains the same
recipe on any onnxruntime (a browser page, Node, Kotlin): with the same data and seed its adapter equals the
numpy one to float32 rounding. Tap statistics the adapter reads (files/tap_stats.py) are no choice of the
recipe: the kit is built over the adapter's view (`edgelora kit --recipe-of` does), whose taps list them. Choices
the kit's graphs cannot express are refused by name.
"""
from __future__ import annotations

from ..files.adapter import AdapterConfig
from .kit import KitRecipe

KIT_CHOICES = {"r", "lora_alpha", "weight_decay", "epochs", "form", "tap_scaling"}   # what the kit can take
RUN_SETTINGS = ("lr", "seed", "schedule", "warmup_epochs", "class_weights", "val_fraction", "patience")


def kit_recipe_of(config: AdapterConfig, where: str = "adapter") -> tuple[KitRecipe, dict]:
    """(recipe baked into the graphs, run defaults for the contract) that reproduce `config`'s training."""
    training = config.training or {}
    chosen, settings = training.get("chosen"), training.get("settings")
    if not isinstance(chosen, dict) or not isinstance(settings, dict):
        raise ValueError(f"{where}: expected an adapter trained by edgelora (training.chosen and training.settings "
                         f"in its config), found training keys {sorted(training)}")
    if chosen.get("tier") == "deep":
        raise ValueError(f"{where}: the kit cannot reproduce a deep adapter (tier 'deep': LoRA inside the backbone's own "
                         f"layers); it trains skip adapters only: fine-tune with `--form skip` for the kit")
    unknown = sorted(set(chosen) - KIT_CHOICES)
    if unknown:
        raise ValueError(f"{where}: the kit cannot reproduce the chosen {', '.join(f'{k}={chosen[k]!r}' for k in unknown)}; "
                         f"it trains {sorted(KIT_CHOICES)} only")
    refused = [f"form={chosen.get('form')!r} (expected 'skip')"] if chosen.get("form", "skip") != "skip" else []
    if chosen.get("tap_scaling", "none") not in ("none", None):
        refused.append(f"tap_scaling={chosen['tap_scaling']!r} (expected 'none': the kit's graphs read raw taps)")
    if float(settings.get("lora_dropout") or 0.0) > 0:
        refused.append(f"lora_dropout={settings['lora_dropout']} (expected 0)")
    if config.recalibration is not None:   # clients compute the rows on the bundle's own statistics
        refused.append(f"recalibration={config.recalibration.kind!r} (expected none: clients compute the rows with "
                       "the bundle's own normalisation statistics)")
    if refused:
        raise ValueError(f"{where}: the kit cannot reproduce this recipe: {'; '.join(refused)}; fine-tune with "
                         "--form skip --tap-scaling none --recalibrate none (or the Python engine) to train it elsewhere")
    recipe = KitRecipe(r=int(chosen.get("r", config.r)), lora_alpha=float(chosen.get("lora_alpha", config.lora_alpha)),
                       bias=config.bias, batch_size=int(settings["batch_size"]), optimizer=settings["optimizer"],
                       momentum=float(settings.get("momentum", 0.9)), clip_norm=settings.get("clip_norm"))
    defaults = {k: settings[k] for k in RUN_SETTINGS if k in settings}
    defaults.update(epochs=int(chosen.get("epochs", settings["epochs"])),
                    weight_decay=float(chosen.get("weight_decay", settings["weight_decay"])))
    return recipe, defaults
