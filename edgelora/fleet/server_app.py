"""The fleet's Flower ServerApp: `edgelora.fleet.server_app:app`.

It reads the bundle's manifest (the server never runs the backbone), starts from a fresh adapter (A
random, B zero) or `init`, runs `num-rounds` rounds of FleetStrategy and, after every round that changed
it, saves the shared adapter to `out` as an ordinary edgelora adapter (atomic folder swap) and the round
log to `<out>.rounds.json`. With `evaluate`, devices also report the shared adapter's loss on their own
validation split after every round and `out` keeps the round with the lowest weighted loss (as `finetune`
keeps its best epoch; replies checked and bounded by edgelora.fleet.evaluation); the round log names it
(`best_round`); until a round has a valid evaluation, `out` holds the latest. A server stopped between rounds
leaves the latest (or best) shared adapter on disk.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from ..files.adapter import Adapter, load_adapter
from ..files.bundle import load_manifest
from ..files.fileio import atomic_write
from .aggregate import ServerOptimizer
from .settings import FleetSettings, check_out, round_to_config, rounds_path, with_init_recipe
from .strategy import FleetStrategy
from .update import SHARED_KEY, adapter_from, initial_adapter, spec_for

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_fleet(grid, FleetSettings.from_run_config(context.run_config))


def run_fleet(grid: Grid, settings: FleetSettings, on_round: Callable[[dict, Adapter], None] | None = None) -> dict:
    """Run the rounds on `grid`; returns the round log (also written next to the adapter).

    `on_round(info, shared)` is called after every round with its log entry and the shared adapter."""
    manifest = load_manifest(settings.bundle)
    out = Path(settings.out)
    check_out(out)
    if settings.init:
        start = load_adapter(settings.init, manifest)
        spec = spec_for(manifest, start.config)   # the warm start's shape
        settings = with_init_recipe(settings, start)
    else:
        spec = spec_for(manifest, settings.shape)
        start = initial_adapter(manifest, spec, settings.seed)
    log = {"settings": settings.to_run_config(), "spec": spec.to_record(), "rounds": [], "started": time.time()}

    def after_round(info: dict) -> None:
        log["rounds"].append(info)
        fleet = {"round": info["round"], "devices": info["accepted"], "samples": int(sum(info["samples"])),
                 "strategy": settings.strategy}
        shared = adapter_from(spec, manifest, strategy.shared, {"fleet": fleet, "settings": settings.to_run_config()})
        loss = info.get("evaluate", {}).get("loss")   # checked replies, bounded (edgelora.fleet.evaluation)
        if info["changed"] and settings.evaluate and loss is not None and loss < log.get("best_loss", float("inf")):
            log["best_round"], log["best_loss"] = info["round"], loss   # devices' validation loss: keep the best
            shared.save(out)
        elif info["changed"] and (not settings.evaluate or "best_round" not in log):
            shared.save(out)   # without a valid evaluation yet, the latest round: `out` is always written
        if on_round is not None:
            on_round(info, shared)
        atomic_write(rounds_path(out), json.dumps(log, indent=1, sort_keys=True, default=float).encode())

    optimizer = ServerOptimizer(settings.strategy, settings.server_momentum, settings.server_lr)
    strategy = FleetStrategy(spec, optimizer, min_clients=settings.min_clients, node_wait=settings.node_wait,
                             max_samples=settings.max_samples, max_norm=settings.max_norm,
                             evaluate=settings.evaluate, on_round=after_round, rule=settings.rule())
    round_config = ConfigRecord(round_to_config(settings.round))
    strategy.start(grid=grid, initial_arrays=ArrayRecord({SHARED_KEY: Array(start.flat)}),
                   num_rounds=settings.num_rounds, timeout=settings.round_timeout,
                   train_config=round_config, evaluate_config=ConfigRecord(round_to_config(settings.round)))
    log["rounds"] = strategy.rounds
    log["seconds"] = time.time() - log.pop("started")
    atomic_write(rounds_path(out), json.dumps(log, indent=1, sort_keys=True, default=float).encode())
    return log
