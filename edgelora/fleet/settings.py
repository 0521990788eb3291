"""The fleet's run configuration: one flat table of TOML values (Flower's run config), validated here.

Keys are kebab-case as Flower expects; `edgelora fleet run` fills them from its flags and
`flwr run APP --run-config 'key=value ...'` can override them. Nothing here imports flwr.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.shape import AdapterShape, check_rank
from ..files.adapter import ADAPTER_KIND, Adapter
from ..files.outputs import check_target
from ..files.schema import check
from ..ops.session_recipe import recorded_recipe
from .aggregate import STRATEGIES
from .device import RoundSettings
from .robust import RobustRule


@dataclass(frozen=True)
class FleetSettings:
    """Everything the ServerApp needs; `round` is what it sends to every device each round."""
    bundle: str                                   # the backbone bundle every device holds (server reads its manifest)
    out: str                                      # folder of the shared adapter (rewritten after every round)
    num_rounds: int = 10
    min_clients: int = 2                          # devices needed to start a round and valid updates to aggregate
    round_timeout: float = 120.0                  # seconds a round waits for replies; late or lost ones are dropped
    node_wait: float = 120.0                      # seconds to wait for min-clients connected devices
    strategy: str = "fedavg"                      # fedavg | fedavgm (server momentum)
    server_momentum: float = 0.9                  # fedavgm's beta
    server_lr: float = 1.0
    rank: int = 4                                 # the shared adapter's shape (`shape`), unless `init` gives it
    lora_alpha: float = 0.0                       # 0: 2 * rank (the shape's default; TOML has no null)
    init: str = ""                                # warm-start the fleet from this adapter folder ("" = fresh)
    recipe: str = "init"                          # init: with `init`, devices train its recorded weight decay
                                                  # (chosen on the device that trained it); settings: `round`'s
    seed: int = 0                                 # of the initial A matrices
    max_norm: float = 1e3                         # reject updates with a larger L2 norm
    max_samples: int = 1_000_000                  # reject updates claiming more samples (weight poisoning)
    aggregation: str = "mean"                     # robust rule: mean | median | trimmed | fedavg (no bounds)
    sample_cap: float = 3.0                       # a device weighs at most this x the round's median samples
    norm_clip: float = 3.0                        # updates clipped to this x the round's median norm
    trim: float = 0.2                             # trimmed: share dropped at each end of every coordinate
    evaluate: bool = False                        # devices report validation metrics of each round's shared
                                                  # adapter; `out` keeps the round with the lowest loss
    round: RoundSettings = field(default_factory=RoundSettings)

    def __post_init__(self):
        check(self.num_rounds >= 1, f"`num-rounds` should be a positive integer, found {self.num_rounds}")
        check(self.min_clients >= 1, f"`min-clients` should be a positive integer, found {self.min_clients}")
        check(self.round_timeout > 0 and self.node_wait > 0, "`round-timeout` and `node-wait` should be positive")
        check(self.strategy in STRATEGIES, f"`strategy` should be one of {STRATEGIES}, found {self.strategy!r}")
        check_rank(self.rank, "rank")
        check(self.lora_alpha >= 0, f"`lora-alpha` should be >= 0 (0: 2 * rank), found {self.lora_alpha}")
        check(self.recipe in ("init", "settings"), f"`recipe` should be 'init' or 'settings', found {self.recipe!r}")
        check(self.max_norm > 0 and self.max_samples >= 1, "`max-norm` and `max-samples` should be positive")
        check(bool(self.bundle) and bool(self.out), "`bundle` and `out` are required")
        self.rule()   # validates aggregation, sample-cap, norm-clip and trim

    @property
    def shape(self) -> AdapterShape:
        """The shape of a fresh shared adapter: `rank`, `lora-alpha` (0: the default), an output bias."""
        return AdapterShape(self.rank, self.lora_alpha or None, True)

    def rule(self) -> RobustRule:
        return RobustRule(self.aggregation, self.sample_cap, self.norm_clip, self.trim)

    def to_run_config(self) -> dict[str, Any]:
        """The flat kebab-case table for Flower's run config."""
        top = {k.replace("_", "-"): v for k, v in dataclasses.asdict(self).items() if k != "round"}
        return {**top, **round_to_config(self.round)}

    @classmethod
    def from_run_config(cls, config) -> "FleetSettings":
        """From Flower's run config (unknown keys are errors, types are checked)."""
        config = dict(config)
        round_keys = {f"{f.name.replace('_', '-')}" for f in dataclasses.fields(RoundSettings)}
        top = {f.name for f in dataclasses.fields(cls)} - {"round"}
        known = {k.replace("_", "-") for k in top} | round_keys
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"fleet run config: unknown key(s) {unknown}; expected some of {sorted(known)}")
        kwargs = {k: _typed(cls, k, config[k.replace("_", "-")]) for k in top if k.replace("_", "-") in config}
        return cls(**kwargs, round=round_from_config({k: v for k, v in config.items() if k in round_keys}))


def with_init_recipe(settings: FleetSettings, init: Adapter) -> FleetSettings:
    """The settings whose rounds train `init`'s recorded recipe (recipe "init"): its weight decay. Its shape is
    the fleet's already (AdapterSpec); its epoch count is not taken: a round's budget is `local-epochs` from
    the shared adapter, rounds x local epochs in all. An adapter re-calibrated on one device is refused: the
    devices share the lab's normalisation statistics."""
    if init.config.recalibration is not None:
        raise ValueError(f"init: adapter {settings.init} carries normalisation statistics re-estimated on one device "
                         f"(`recalibration` {init.config.recalibration.kind!r}); a fleet trains on the lab's statistics "
                         "every device shares: start it from an adapter fine-tuned with --recalibrate none")
    recipe = recorded_recipe(init) if settings.recipe == "init" else None
    if recipe is None:
        return settings
    return dataclasses.replace(settings, round=dataclasses.replace(settings.round, weight_decay=recipe["weight_decay"]))


def round_to_config(settings: RoundSettings) -> dict[str, Any]:
    return {k.replace("_", "-"): v for k, v in dataclasses.asdict(settings).items()}


def round_from_config(config) -> RoundSettings:
    """RoundSettings from the kebab-case keys the server sends (missing keys keep their defaults)."""
    names = {f.name for f in dataclasses.fields(RoundSettings)}
    kwargs = {n: _typed(RoundSettings, n, config[n.replace("_", "-")]) for n in names
              if n.replace("_", "-") in config}
    return RoundSettings(**kwargs)


def _typed(cls, name: str, value):
    """TOML gives ints for whole floats: accept them for float fields; refuse anything else mistyped."""
    default = next(f for f in dataclasses.fields(cls) if f.name == name).default
    kind = str if default is dataclasses.MISSING else type(default)   # bundle, out
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"fleet run config: `{name.replace('_', '-')}` should be {kind.__name__}, "
                        f"found {type(value).__name__} {value!r}")
    return value


def rounds_path(out: Path) -> Path:
    """Where the server writes the round log next to the shared adapter folder `out`."""
    return out.with_name(out.name + ".rounds.json")


def check_out(out: Path) -> None:
    """Refuse to replace anything but an earlier adapter (edgelora.files.outputs: what a writer may replace)."""
    try:
        check_target(out, ADAPTER_KIND, flag="")
    except ValueError as e:
        raise ValueError(f"out: {e}") from None
