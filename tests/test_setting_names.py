"""A setting keeps its name from the command line to its use (docs/code-map.md, "How a setting reaches its use"):
the finetune flags' destinations are TrainConfig's fields, but for a few named renames."""
import argparse
import dataclasses

from edgelora import Backbone, TrainConfig, finetune
from edgelora.cli import build_parser
from edgelora.cli.finetune import _config

RENAMED = {"alpha": "lora_alpha", "time_budget": "cv_seconds", "deep_budget": "deep_seconds",
           "force_adapter": "identity"}   # flag (as users know it) -> TrainConfig field
NOT_SETTINGS = {"require_gain", "engine"}  # what the command does with the adapter; which trainer runs


def finetune_parser() -> argparse.ArgumentParser:
    parser = build_parser(["finetune"])
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["finetune"]


def test_training_flags_are_trainconfig_fields_or_named_renames():
    group = next(g for g in finetune_parser()._action_groups if g.title == "training")
    dests = {a.dest for a in group._group_actions}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert {"r", "cv_folds", "tap_scaling"} <= dests & fields
    assert dests - fields == set(RENAMED) | NOT_SETTINGS, "a new flag renames a setting: name it as the field"
    assert set(RENAMED.values()) <= fields


def test_rank_folds_and_tap_scaling_reach_their_use_by_name(toy_bundle, toy_data, tmp_path):
    """--rank, --cv-folds and --tap-scaling, parsed, as the config, the cross-validation and the adapter see them."""
    args = build_parser(["finetune"]).parse_args(
        ["finetune", str(toy_bundle), "--out", str(tmp_path / "a"), "--data", str(tmp_path / "d.npz"), "--rank", "3",
         "--cv-folds", "3", "--tap-scaling", "standard", "--form", "skip", "--weight-decay", "0.1", "--epochs", "4",
         "--force-adapter"])
    assert (args.r, args.cv_folds, args.tap_scaling) == (3, 3, "standard")
    config = _config(args)
    assert (config.r, config.cv_folds, config.tap_scaling) == (3, 3, "standard")
    adapter, history = finetune(Backbone(toy_bundle), *toy_data, config)
    assert history.selection["folds"] == 3 and history.selection["adapter"]["r"] == 3
    assert (history.chosen["r"], history.chosen["tap_scaling"]) == (3, "standard") and adapter.config.r == 3
    assert adapter.config.training["settings"]["cv_folds"] == 3
