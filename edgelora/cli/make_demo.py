"""Make the demo's pre-trained backbone bundle (edgelora/data/demo_bundle) from scikit-learn's digits.

    python -m edgelora.cli.make_demo                 # rewrites edgelora/data/demo_bundle
    python -m edgelora.cli.make_demo --out /tmp/b    # somewhere else

The lab side of the demo: an MLP 64 -> 64 -> 32 -> 10 (ReLU), the paper's kind of model, trained with
Adam on the first 1,000 clean digits (edgelora.cli.demo_data), in plain numpy (float64, one thread, fixed
seed), so neither torch nor a network is needed and a rerun on the same machine writes the same bytes
(another CPU or BLAS may differ in the last bits). The ONNX graph is written with onnx.helper at
opset 17 / IR 8; each Linear layer's input is a tap (Skip2-LoRA), and the manifest standardises the
input with the training pixels' mean and standard deviation.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .. import __version__
from ..files.bundle import BUNDLE_FORMAT_VERSION, InputSpec, Manifest, OutputSpec, Standardize, TapSpec, write_bundle
from .demo_data import CITATION, splits

OUT = Path(__file__).resolve().parent.parent / "data" / "demo_bundle"
PRODUCER = "export/make_demo.py"    # this script's path when it made the shipped bundle: kept, so rebuilds match it
SIZES = (64, 64, 32, 10)
EPOCHS, BATCH, LR, WEIGHT_DECAY, SEED = 60, 32, 1e-2, 1e-4, 0

Layers = list[tuple[np.ndarray, np.ndarray]]   # [(W (d_in, d_out), b (d_out,))]


def train(x: np.ndarray, y: np.ndarray, mean: float, std: float) -> Layers:
    """Adam on softmax cross-entropy, mini-batches of BATCH, He-initialised; returns float32 layers."""
    rng = np.random.default_rng(SEED)
    W = [rng.standard_normal((a, b)) * np.sqrt(2.0 / a) for a, b in zip(SIZES[:-1], SIZES[1:])]
    b = [np.zeros(d) for d in SIZES[1:]]
    params = W + b
    m1, m2 = [np.zeros_like(p) for p in params], [np.zeros_like(p) for p in params]
    xn, step = (x.astype(np.float64) - mean) / std, 0
    for _ in range(EPOCHS):
        perm = rng.permutation(len(x))
        for i in range(0, len(x), BATCH):
            idx = perm[i:i + BATCH]
            acts = [xn[idx]]                                    # inputs of each layer (the taps)
            for k in range(len(W)):
                z = acts[-1] @ W[k] + b[k]
                acts.append(np.maximum(z, 0.0) if k < len(W) - 1 else z)
            p = np.exp(acts[-1] - acts[-1].max(axis=1, keepdims=True))
            g = p / p.sum(axis=1, keepdims=True)
            g[np.arange(len(idx)), y[idx]] -= 1.0
            g /= len(idx)                                       # dL/dlogits
            gW, gb = [None] * len(W), [None] * len(W)
            for k in reversed(range(len(W))):
                gW[k], gb[k] = acts[k].T @ g + WEIGHT_DECAY * W[k], g.sum(axis=0)
                g = (g @ W[k].T) * (acts[k] > 0)
            step += 1
            for p_, g_, a, v in zip(params, gW + gb, m1, m2):
                a *= 0.9
                a += 0.1 * g_
                v *= 0.999
                v += 0.001 * g_ * g_
                p_ -= LR * (a / (1 - 0.9 ** step)) / (np.sqrt(v / (1 - 0.999 ** step)) + 1e-8)
    return [(w.astype(np.float32), c.astype(np.float32)) for w, c in zip(W, b)]


def onnx_bytes(layers: Layers, name: str = "demo_digits_mlp", producer: str = f"edgelora {PRODUCER}") -> bytes:
    """x -> [Gemm, Relu]* -> Gemm -> logits, with each Gemm's input also an output (tap0, tap1, ...); layers:
    float32 (weight (d_in, d_out), bias (d_out,)) pairs (the tests' toy backbones are built so too)."""
    nodes, inits, taps, h = [], [], [], "x"
    for i, (w, c) in enumerate(layers):
        inits += [numpy_helper.from_array(w, f"fc{i}.weight"), numpy_helper.from_array(c, f"fc{i}.bias")]
        nodes.append(helper.make_node("Identity", [h], [f"tap{i}"]))
        taps.append(helper.make_tensor_value_info(f"tap{i}", TensorProto.FLOAT, ["N", w.shape[0]]))
        nodes.append(helper.make_node("Gemm", [h, f"fc{i}.weight", f"fc{i}.bias"], [f"fc{i}.out"]))
        h = f"fc{i}.out"
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [h], [f"relu{i}.out"]))
            h = f"relu{i}.out"
    nodes.append(helper.make_node("Identity", [h], ["logits"]))
    graph = helper.make_graph(nodes, name,
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", layers[0][0].shape[0]])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", layers[-1][0].shape[1]])]
                              + taps, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8, producer_name=producer)
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def build(out: Path = OUT) -> Manifest:
    """Train the demo backbone and write its bundle to `out`; returns the manifest."""
    x, y = splits()["lab_train"]
    mean, std = float(x.mean()), float(x.std())
    layers = train(x, y, mean, std)
    manifest = Manifest(
        format_version=BUNDLE_FORMAT_VERSION, fingerprint="sha256:" + "0" * 64,
        inputs=(InputSpec("x", ("N", SIZES[0]), "float32"),), output=OutputSpec("logits", SIZES[-1]),
        taps=tuple(TapSpec(f"fc{i}.input", f"tap{i}", SIZES[i], "none", f"fc{i}") for i in range(len(layers))),
        task="classification", classes=tuple(str(d) for d in range(10)),
        preprocess={"x": Standardize(round(mean, 6), round(std, 6))},
        producer={"name": PRODUCER, "edgelora": __version__,
                  "model": "MLP " + " -> ".join(map(str, SIZES)) + " (ReLU)",
                  "data": f"first 1000 images of the {CITATION}"})
    return write_bundle(out, onnx_bytes(layers), manifest)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"bundle folder to write (default {OUT})")
    args = parser.parse_args(argv)
    from threadpoolctl import threadpool_limits     # installed with scikit-learn, which the digits need
    with threadpool_limits(1):                      # one BLAS thread: reproducible sums
        manifest = build(args.out)
    print(f"wrote {args.out} ({manifest.fingerprint})")


if __name__ == "__main__":
    main()
