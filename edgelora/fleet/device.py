"""One device of a fleet: its bundle, its Skip-Cache, its labelled samples and its adapter store.

A round: receive the shared adapter (kept in the device's store as adapter `fleet`, so a restarted device
serves the latest one it saw), fine-tune from it on the local samples (`finetune_features(init=shared)`: they
are checked and read from the Skip-Cache once, only samples never seen before running through the backbone),
and return the update `local - shared`. Raw samples never leave the device. Nothing here imports flwr: the
ClientApp and the in-process grid both call it.
"""
from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..core.metrics import evaluate_outputs
from ..files.adapter import Adapter
from ..files.data import as_inputs, as_targets, load_arrays, num_samples
from ..files.fileio import PathLike
from ..files.schema import check
from ..ops.store import AdapterStore
from ..runtime.backbone import Backbone
from ..runtime.cache import SkipCache
from ..runtime.features import FeatureSource
from ..runtime.predict import Predictor
from ..runtime.train import finetune_features
from ..runtime.train_config import TrainConfig, training_split, validation_split
from .update import UPDATE_DTYPES, AdapterSpec, adapter_from, check_shared, encode_update

SHARED_NAME = "fleet"   # the store name under which a device keeps the shared adapters it received
KEEP_SHARED = 3         # versions of the shared adapter kept on the device
MAX_SHARED_NORM = 1e3   # a shared adapter with a larger L2 norm is refused (node config `max-shared-norm`)
LOG = logging.getLogger("edgelora.fleet")


@dataclass(frozen=True)
class RoundSettings:
    """What every device does in a round (the run config of `edgelora fleet run`)."""
    local_epochs: int = 2            # fine-tuning epochs per round, warm-started from the shared adapter (har: 2)
    batch_size: int = 20
    lr: float = 3e-3
    weight_decay: float = 1.0        # AdamW's decoupled decay, as TrainConfig's default
    val_fraction: float = 0.2        # each class's most recent share: early stopping and the evaluate metrics
    update_dtype: str = "float16"    # transport dtype of the update (float16: half the bytes)
    seed: int = 0

    def __post_init__(self):
        check(self.update_dtype in UPDATE_DTYPES,
              f"`update-dtype` should be one of {UPDATE_DTYPES}, found {self.update_dtype!r}")
        TrainConfig(**self._train_kwargs())  # validates the training fields, naming the field

    def _train_kwargs(self) -> dict:
        return {"epochs": self.local_epochs, "batch_size": self.batch_size, "lr": self.lr,
                "weight_decay": self.weight_decay, "val_fraction": self.val_fraction, "seed": self.seed}

    def train_config(self, server_round: int) -> TrainConfig:
        return replace(TrainConfig(**self._train_kwargs()), seed=self.seed + server_round)


class FleetDevice:
    """A device's side of federated rounds over one bundle and one labelled data set."""

    def __init__(self, bundle: PathLike, x, y, workdir: PathLike, threads: int = 1,
                 max_shared_norm: float = MAX_SHARED_NORM):
        check(max_shared_norm > 0, f"`max-shared-norm` should be positive, found {max_shared_norm}")
        self.max_shared_norm = float(max_shared_norm)
        self.backbone = Backbone(bundle, threads=threads)
        m = self.backbone.manifest
        self.inputs = as_inputs(x, m)
        self.targets = as_targets(y, m, num_samples(self.inputs))
        self.workdir = Path(workdir)
        self.store = AdapterStore(self.workdir / "store")
        self.cache = SkipCache(self.backbone, self.store.cache_dir)

    @functools.cached_property
    def features(self) -> FeatureSource:
        """The local samples' rows, read from the Skip-Cache at the first round: every round trains on them
        without checking or hashing a sample again."""
        return FeatureSource.from_cache(self.cache, self.inputs)

    @classmethod
    def from_files(cls, bundle: PathLike, data: PathLike, workdir: PathLike, x_key: str = "x",
                   y_key: str = "y", threads: int = 1, max_shared_norm: float = MAX_SHARED_NORM) -> "FleetDevice":
        x, y = load_arrays(data, x_key, y_key)
        if y is None:
            raise ValueError(f"{data}: a fleet device needs labelled samples; found inputs only")
        return cls(bundle, x, y, workdir, threads, max_shared_norm)

    def receive(self, spec: AdapterSpec, flat: np.ndarray, server_round: int) -> Adapter:
        """Check the shared adapter (this device's backbone, finite, norm bound) and keep it as the store's
        `fleet`; one that fails is refused (ValueError), logged and never stored: the last good one stays."""
        try:
            reason = check_shared(flat, self.max_shared_norm)
            if reason is not None:
                raise ValueError(f"shared adapter of round {server_round} refused: {reason}")
            shared = adapter_from(spec, self.backbone.manifest, flat, {"fleet": {"round": int(server_round)}})
        except ValueError as e:
            LOG.warning("%s; still serving the last good shared adapter", e)
            raise
        try:
            latest = self.latest_shared()
        except ValueError as e:   # a version no longer loadable (stored before these checks): replaced below
            LOG.warning("the stored shared adapter cannot be loaded (%s); keeping the new one", e)
            latest = None
        if latest is None or not np.array_equal(latest.flat, shared.flat):
            parent = self.store.current(SHARED_NAME) if self.store.exists(SHARED_NAME) else None
            info = self.store.add_version(SHARED_NAME, shared, parent=parent,
                                          samples=0, reason=f"shared adapter of round {server_round}",
                                          extra={"round": int(server_round)})
            self.store.set_current(SHARED_NAME, info.version)
            self.store.prune(SHARED_NAME, KEEP_SHARED)
        return shared

    def latest_shared(self) -> Adapter | None:
        """The newest shared adapter this device received (what it serves without a personal one)."""
        if not self.store.exists(SHARED_NAME) or self.store.current(SHARED_NAME) is None:
            return None
        return self.store.load(SHARED_NAME, manifest=self.backbone.manifest)

    def train(self, shared: Adapter, settings: RoundSettings, server_round: int) -> tuple[np.ndarray, int, dict]:
        """Fine-tune from the shared adapter: (update, training samples, metrics)."""
        start = time.perf_counter()
        config = settings.train_config(server_round)
        split = training_split(self.backbone.manifest, self.targets, config)
        local, history = finetune_features(self.features, self.targets, split, config, init=shared)
        update = encode_update(local.flat, shared.flat, settings.update_dtype)
        metrics = {"train-seconds": time.perf_counter() - start, "update-bytes": int(update.nbytes),
                   "backbone-runs": int(history.cache.get("misses", 0)), "best-epoch": int(history.best_epoch)}
        metrics.update({f"val-{k}": float(v) for k, v in history.val_metrics.items() if k != "samples"})
        return update, int(history.samples["train"]), metrics

    def evaluate(self, adapter: Adapter | None, settings: RoundSettings) -> tuple[int, dict]:
        """Metrics of `adapter` on this device's validation split (each class's most recent samples)."""
        m = self.backbone.manifest
        _, val = validation_split(self.targets, settings.val_fraction or 0.2, "tail", settings.seed, m.task)
        y0, t = self.features(val)
        out = Predictor(self.backbone, adapter).apply(y0, t)
        return int(len(val)), {k: float(v) for k, v in evaluate_outputs(out, self.targets[val], m.task).items()
                               if k != "samples"}
