"""What the deep tier would cost before it is paid: the memory it holds while training and the CPU time of its
cross-validation and refit, projected from a few timed optimiser steps (runtime/deep.py's rule reads both)."""
from __future__ import annotations

import math
import time

import numpy as np

from ..core.backprop import init_params
from ..core.deep_loop import STEM_BYTES
from ..core.lora import split
from ..core.selection import fold_count
from .train_config import TrainConfig

PROBE_STEPS = 3           # optimiser steps timed to project the deep tier's cost (the fastest counts)


def memory_need(eng, x: np.ndarray, batch_size: int) -> int:
    """Bytes the deep tier holds while training: the prepared inputs, one mini-batch's saved activations (the
    im2col columns included; measured on one and on two samples, so what a step saves once, such as a merged
    layer's weight update, is not counted per sample) and as much again for their gradients, the first layer's
    Stem (core/deep_loop.STEM_BYTES at most), the parameters with their gradient and two optimiser buffers."""
    flat, shapes = init_params(eng.chain, eng.modes, eng.r, 0)
    one, two = (_nbytes(eng.forward(split(flat, shapes), eng.prefix(np.repeat(x[:1], m, axis=0)))[1]) for m in (1, 2))
    step = one + (batch_size - 1) * (two - one)
    return int(x.nbytes + stem_bytes(eng, x) + 2 * step + 4 * flat.nbytes)


def stem_bytes(eng, x: np.ndarray) -> int:
    """Bytes of the first layer's Stem that training keeps for inputs x (core/deep_loop.fit); 0 when none."""
    one = eng.stem(x[:1], math.inf)
    return len(x) * one.nbytes if one is not None and len(x) * one.nbytes <= STEM_BYTES else 0


def check_memory(eng, x: np.ndarray, batch_size: int, budget: int | None) -> None:
    """ValueError when the deep tier would hold more than the Skip-Cache's memory budget (None: no budget)."""
    need = memory_need(eng, x, batch_size)
    if budget is not None and need > budget:
        raise ValueError(f"the deep tier needs about {need:,} bytes ({len(x)} prepared inputs of {x[0].nbytes:,} "
                         f"bytes and a mini-batch of {batch_size}), more than the memory budget of {budget:,} bytes; "
                         f"use fewer samples, a smaller `batch_size`, or a larger budget")


def projected_seconds(eng, x: np.ndarray, n: int, config: TrainConfig, epochs: int) -> float:
    """CPU seconds the deep tier's k-fold cross-validation and refit would take on n samples: the fastest of
    PROBE_STEPS timed optimiser steps (forward and backward of one mini-batch, from the first layer's Stem when
    training will have one) times the steps they make."""
    flat, shapes = init_params(eng.chain, eng.modes, eng.r, 0)
    p, g, b = split(flat, shapes), split(np.zeros_like(flat), shapes), x[:config.batch_size]
    stem = eng.stem(b, math.inf) if stem_bytes(eng, x) else None
    step = math.inf
    for _ in range(PROBE_STEPS):
        t = time.process_time()
        out, saved = (eng.forward(p, None, first=stem.rows(np.arange(len(b)))) if stem is not None
                      else eng.forward(p, eng.prefix(b)))
        eng.backward(np.full_like(out, 1e-3, dtype=np.float32), saved, p, g)
        step = min(step, (time.process_time() - t) * config.batch_size / len(b))
    k = max(2, fold_count(config.cv_folds, n))
    per_epoch = k * math.ceil(n * (k - 1) / k / config.batch_size) + math.ceil(n / config.batch_size)
    return step * epochs * per_epoch


def _nbytes(v) -> int:
    if isinstance(v, np.ndarray):
        return v.nbytes
    return sum(_nbytes(u) for u in v) if isinstance(v, (tuple, list)) else 0
