"""What a fine-tune is asked, checked before any work: `check_request` refuses settings no trainer can carry
out (the settings, not the data), and `run_key` is what a checkpoint must match to be resumed."""
from __future__ import annotations

import itertools
import json
from typing import TYPE_CHECKING

import numpy as np

from ..files.adapter import Adapter
from ..files.bundle import Manifest
from ..files.fileio import PathLike
from ..files.formats import digest
from ..files.schema import to_dict
from .train_config import TrainConfig

if TYPE_CHECKING:
    from ..graphs.kit import Kit


def check_request(m: Manifest, config: TrainConfig, *, init: Adapter | None, use_cache: bool,
                   checkpoint_dir: PathLike | None, engine: str, kit: Kit | None) -> None:
    """Refuse, before any backbone work, a request no trainer can carry out (the settings, not the data)."""
    if engine not in ("numpy", "onnx"):
        raise ValueError(f"engine should be 'numpy' or 'onnx', found {engine!r}")
    if engine == "onnx" and (init is not None or not use_cache or checkpoint_dir is not None):
        raise ValueError("engine='onnx' trains a new adapter from the Skip-Cache: init, use_cache=False and "
                         "checkpoint_dir need engine='numpy'")
    if engine == "onnx" and config.recalibrate != "none":
        raise ValueError(f"`recalibrate` {config.recalibrate!r} needs engine='numpy' (the training kit trains over "
                         f"the lab's statistics); use recalibrate='none' with engine='onnx'")
    if engine == "numpy" and kit is not None:
        raise ValueError("a training kit is used by engine='onnx' only")
    if engine == "onnx":
        from .onnx_trainer import check_kit
        check_kit(m, config, kit)  # an explicit recipe, and a given kit built for this backbone
    if init is not None:
        init.check_backbone(m, "initial adapter")
        if init.config.backbone_fingerprint != m.identity:
            raise ValueError(f"the initial adapter was trained over re-calibrated statistics (its `recalibration`, "
                             f"kind {init.config.recalibration.kind!r}); warm-start it on features of that backbone: "
                             f"Backbone.recalibrated(adapter.config.recalibration)")
    if config.tap_scaling == "standard" and (init is not None or not config.bias):
        raise ValueError("`tap_scaling` 'standard' needs `bias`=True and no initial adapter (its weights act on raw taps)")
    if config.form == "deep" and config.recalibrate != "none":
        raise ValueError("`form` 'deep' re-estimates the batch-norm statistics itself (runtime/deep.py): it needs "
                         f"`recalibrate` 'none', found {config.recalibrate!r}")
    if config.form == "deep" and (init is not None or engine != "numpy" or not use_cache):
        raise ValueError("`form` 'deep' trains a new adapter in numpy from the Skip-Cache's samples: it needs no "
                         "initial adapter, engine='numpy' and use_cache=True")
    if config.form == "last" and init is not None:
        raise ValueError("`form` 'last' starts a new adapter; an initial adapter (warm start) continues in form 'skip'")


def run_key(identity: str, source: str, config: TrainConfig, inputs: dict, targets: np.ndarray, init) -> dict:
    """What a checkpoint must match to be resumed, one entry each: backbone, feature source (cache dtype),
    settings, data, starting adapter; a refused resume names the ones that differ."""
    data = [b for name in sorted(inputs) for b in (name.encode(), np.ascontiguousarray(inputs[name]).data)]
    return {"backbone": digest(identity.encode()), "feature source": source,
            "settings": digest(json.dumps(to_dict(config), sort_keys=True).encode()),
            "data": digest(itertools.chain(data, _label_bytes(targets))),   # streamed: nothing copied whole
            "starting adapter": None if init is None else digest(init.flat.tobytes())}


def _label_bytes(targets: np.ndarray, chunk: int = 1 << 16):
    """The labels' bytes for the run key, integers as int64 whatever their narrowed type (core/bookkeeping.py):
    checkpoints written before labels were narrowed still resume. In chunks: no int64 copy of them all."""
    wide = targets.dtype.kind in "iu"
    for a in range(0, len(targets), chunk):
        part = targets[a:a + chunk]
        yield np.ascontiguousarray(part.astype(np.int64) if wide else part).tobytes()
