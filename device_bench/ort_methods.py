"""The optional peer: onnxruntime's on-device training API (onnxruntime-training 1.19.2, deprecated after it)
for FT-All and FT-Last. Needs its own virtual environment (onnx==1.17.0, no torch); `run --ort-python PATH`.

Artifacts (training/eval/optimizer graphs + checkpoint) are generated from the bundle's ONNX before the
timed loop, like building the torch model: a device would receive them ready-made. The optimiser is
onnxblock's AdamW with weight decay 0 and eps 1e-8, i.e. the recipe's Adam lr 1e-3. One ORT call runs
forward and backward together, so its time is reported as 'forward' (README).
"""
from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import time
import types

import numpy as np


def _training_api():
    """onnxruntime.training without its __init__ (which imports torch for ORTModule, unused here)."""
    if "onnxruntime.training" not in sys.modules:
        spec = importlib.util.find_spec("onnxruntime")
        pkg = types.ModuleType("onnxruntime.training")
        pkg.__path__ = [os.path.join(os.path.dirname(spec.origin), "training")]
        sys.modules["onnxruntime.training"] = pkg
    from onnxruntime.training import artifacts, onnxblock
    from onnxruntime.training.api import CheckpointState, Module, Optimizer
    return artifacts, onnxblock, CheckpointState, Module, Optimizer


import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

from edgelora.files.bundle import load_manifest, model_path  # noqa: E402
from edgelora.runtime.train_config import validation_split  # noqa: E402

from .config import BenchConfig  # noqa: E402
from .profile import Clock, peak_rss_mb  # noqa: E402

artifacts, onnxblock, CheckpointState, Module, Optimizer = _training_api()


def build_artifacts(bundle: str, method: str, folder: str) -> tuple[list[str], object]:
    """Training artifacts of the bundle's base output (taps dropped) for FT-All or FT-Last; returns the
    trainable initializer names and the manifest."""
    manifest = load_manifest(bundle)
    model = onnx.load(str(model_path(bundle, manifest)))
    g = model.graph
    keep = [o for o in g.output if o.name == manifest.output.name]
    del g.output[:]
    g.output.extend(keep)
    weights = []   # (weight, bias) initializer names of the Gemm/Conv/MatMul layers, in graph order
    inits = {i.name for i in g.initializer}
    for node in g.node:
        if node.op_type in ("Gemm", "Conv", "MatMul"):
            weights.append([n for n in node.input[1:] if n in inits])
    if not weights:
        raise ValueError(f"{bundle}: no Gemm/Conv/MatMul layer with initializer weights to train")
    train = [n for w in (weights if method == "ort-ft-all" else weights[-1:]) for n in w]
    frozen = [n for n in inits if n not in train and n in {x for w in weights for x in w}]
    artifacts.generate_artifacts(model, requires_grad=train, frozen_params=frozen,
                                 loss=artifacts.LossType.CrossEntropyLoss,
                                 optimizer=onnxblock.optim.AdamW(eps=1e-8, weight_decay=0.0),
                                 artifact_directory=folder)
    return train, manifest


def _prep(x: np.ndarray, manifest) -> np.ndarray:
    pre = manifest.preprocess.get(manifest.inputs[0].name)
    x = np.asarray(x, np.float32)
    return x if pre is None else ((x - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)).astype(np.float32)


def run(method: str, bundle: str, data: dict, cfg: BenchConfig, seed: int) -> dict:
    """One fine-tune + test evaluation, as reported by the worker."""
    if method not in ("ort-ft-all", "ort-ft-last"):
        raise ValueError(f"unknown onnxruntime-training method {method!r}; expected ort-ft-all or ort-ft-last")
    with tempfile.TemporaryDirectory(prefix="bench-ort-") as folder:
        _, manifest = build_artifacts(bundle, method, folder)
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
        state = CheckpointState.load_checkpoint(os.path.join(folder, "checkpoint"))
        mod = Module(os.path.join(folder, "training_model.onnx"), state, os.path.join(folder, "eval_model.onnx"),
                     device="cpu", session_options=so)
        opt = Optimizer(os.path.join(folder, "optimizer_model.onnx"), mod)
        opt.set_learning_rate(cfg.ft_lr)
        clock = Clock()
        t0 = t = time.perf_counter()
        x = _prep(data["x_ft"], manifest)
        y = np.asarray(data["y_ft"], np.int64)
        train_idx, val_idx = validation_split(y, cfg.val_fraction, "tail", seed, "classification")
        rng = np.random.default_rng(seed)
        best, best_loss, best_epoch, bs = None, None, 0, cfg.batch_size
        t = clock.add("other", t)
        for epoch in range(1, cfg.epochs + 1):
            mod.train()
            perm = rng.permutation(train_idx)
            for i in range(0, len(perm), bs):
                idx = perm[i:i + bs]
                xb, yb = x[idx], y[idx]
                t = clock.add("other", t)
                mod(xb, yb)                        # forward + backward in one call
                t = clock.add("forward", t)
                opt.step()
                mod.lazy_reset_grad()
                t = clock.add("update", t)
            if len(val_idx):
                mod.eval()
                loss = float(mod(x[val_idx], y[val_idx]))
                t = clock.add("eval", t)
                if best_loss is None or loss < best_loss:
                    best_loss, best_epoch = loss, epoch
                    best = mod.get_contiguous_parameters(True).numpy().copy()
            t = clock.add("other", t)
        if best is not None:
            mod.copy_buffer_to_parameters(ort.OrtValue.ortvalue_from_numpy(best)._ortvalue)  # the C value
        seconds = clock.add("other", t) - t0
        record = {"seconds": seconds, "breakdown": clock.sections, "best_epoch": best_epoch,
                  "trainable_params": int(mod.get_parameters_size(True)),
                  "steps": cfg.epochs * -(-len(train_idx) // bs), "epoch_seconds": seconds / cfg.epochs,
                  "samples": {"train": int(len(train_idx)), "val": int(len(val_idx))},
                  "peak_rss_mb": peak_rss_mb()}
        inference = os.path.join(folder, "inference.onnx")
        mod.export_model_for_inferencing(inference, [manifest.output.name])
        sess = ort.InferenceSession(inference, so, providers=["CPUExecutionProvider"])
        logits = sess.run(None, {manifest.inputs[0].name: _prep(data["x_te"], manifest)})[0]
        record["accuracy"] = float((logits.argmax(1) == np.asarray(data["y_te"])).mean())
    return record
