"""Skip2-LoRA training as plain ONNX graphs (opset 17, IR 8): one train epoch, and an evaluation pass.

The train-epoch graph is one `Loop` over mini-batches. Each step mirrors the numpy trainer operation
for operation (lora.forward/backward, losses.cross_entropy_grad, optim.Adam/SGD, clip_grad_norm), so
any onnxruntime (C, C++, Java/Kotlin, Swift, JavaScript/wasm) trains the same adapter as edgelora.
Scalars numpy computes in float64 (bias corrections, `1 - lr wd`) are computed in double here too.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..core.lora import Layout
from .adapter_nodes import adapter_forward
from .onnx_utils import IR_VERSION, OPSET

F32, F64, I64, BOOL = TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT64, TensorProto.BOOL


class _Graph:
    """A tiny node builder: `g.op("MatMul", a, b)` returns the new value's name."""

    def __init__(self, prefix: str):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.prefix, self.count = prefix, 0
        self.consts: dict[tuple, str] = {}  # one initializer per distinct value: each costs time per Loop step

    def _name(self) -> str:
        self.count += 1
        return f"{self.prefix}{self.count}"

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs) -> str:
        out = out or self._name()
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=f"{op_type}_{out}", **attrs))
        return out

    def const(self, value, dtype) -> str:
        a = np.asarray(value, dtype)
        key = (a.dtype.str, a.shape, a.tobytes())
        if key not in self.consts:
            self.consts[key] = self._name()
            self.inits.append(numpy_helper.from_array(a, self.consts[key]))
        return self.consts[key]

    def split(self, x: str, sizes: list[int], axis: int = 0) -> list[str]:
        """Split x into pieces of `sizes` along `axis` (one node)."""
        outs = [self._name() for _ in sizes]
        self.nodes.append(helper.make_node("Split", [x, self.const(sizes, np.int64)], outs, name=f"Split_{outs[0]}",
                                           axis=axis))
        return outs

    def cut(self, x: str, start: int, end: int, axis: int = 0) -> str:
        """x[start:end] along `axis`."""
        return self.op("Slice", x, self.const([start], np.int64), self.const([end], np.int64),
                       self.const([axis], np.int64))


def _param_views(g: _Graph, params: str, layout: Layout) -> dict[str, str]:
    """Named views (reshaped pieces) of the flat parameter buffer, in lora.views order."""
    shapes = layout.shapes
    pieces = g.split(params, [int(np.prod(s)) for s in shapes.values()])
    return {key: piece if len(shape) == 1 else g.op("Reshape", piece, g.const(shape, np.int64))
            for (key, shape), piece in zip(shapes.items(), pieces)}


def _forward(g: _Graph, rows: str, p: dict[str, str], layout: Layout, scale: float):
    """rows [y0 | taps] (b, C + D) -> (y (b, C), h (b, K r), taps t_k): lora.forward (adapter_nodes.py)."""
    y0, *taps = g.split(rows, [layout.num_outputs, *layout.widths], axis=1)
    y, h = adapter_forward(lambda op_type, inputs, role, **attrs: g.op(op_type, *inputs, **attrs), y0,
                           [(name, t, p[key]) for name, t, key in zip(layout.taps, taps, layout.a_keys)], p["B"],
                           lambda: g.const(scale, np.float32), p["bias"] if layout.bias else None, concat_one=False)
    return y, h, taps


def _loss_grad(g: _Graph, y: str, idx: str, task: str, c: int) -> str:
    """dL/dy of the batch: weighted softmax cross-entropy (losses.cross_entropy_grad) or MSE."""
    if task == "classification":
        labels = g.op("Gather", "targets", idx)
        diff = g.op("Sub", _softmax(g, y), g.op("Gather", g.const(np.eye(c), np.float32), labels))
        w = g.op("Gather", "class_weights", labels)
        share = g.op("Div", w, g.op("ReduceSum", w, keepdims=0))
        return g.op("Mul", diff, g.op("Unsqueeze", share, g.const([1], np.int64)))
    d = g.op("Sub", y, g.op("Gather", "targets", idx))
    size = g.op("Cast", g.op("ReduceProd", g.op("Shape", y), keepdims=0), to=F64)
    return g.op("Mul", d, g.op("Cast", g.op("Div", g.const(2.0, np.float64), size), to=F32))


def _softmax(g: _Graph, y: str) -> str:
    """Softmax over classes with numpy's float32 roundings (losses.cross_entropy_grad), but exp and the sum
    taken in double and rounded once: float32 exp and reductions are platform kernels (AVX2, NEON, wasm SIMD)
    that differ in the last bit, and Adam turns such bits into visible differences within a few epochs."""
    axis = g.const([1], np.int64)
    z = g.op("Sub", y, g.op("ReduceMax", y, axes=[1], keepdims=1))
    e = g.op("Cast", g.op("Exp", g.op("Cast", z, to=F64)), to=F32)
    total = g.op("Cast", g.op("ReduceSum", g.op("Cast", e, to=F64), axis, keepdims=1), to=F32)
    return g.op("Div", e, total)


def _backward(g: _Graph, gy: str, h: str, taps: list[str], p: dict[str, str], layout: Layout, scale: float) -> str:
    """The flat gradient (lora.backward), in the parameter buffer's layout."""
    r, parts = layout.r, {}
    if layout.bias:
        parts["bias"] = g.op("ReduceSum", gy, g.const([0], np.int64), keepdims=0)
    gs = g.op("Mul", gy, g.const(scale, np.float32))
    parts["B"] = g.op("Gemm", h, gs, transA=1)
    gh = g.op("Gemm", gs, p["B"], transB=1)
    ghs = g.split(gh, [r] * len(taps), axis=1) if len(taps) > 1 else [gh]
    for t, key, ghk in zip(taps, layout.a_keys, ghs):
        parts[key] = g.op("Gemm", t, ghk, transA=1)
    flat = [parts[key] if key == "bias" else g.op("Reshape", parts[key], g.const([-1], np.int64))
            for key in layout.shapes]
    return g.op("Concat", *flat, axis=0)


def _clip(g: _Graph, grad: str, max_norm: float) -> str:
    """optim.clip_grad_norm: scale by max_norm / (norm + 1e-12) when the L2 norm exceeds max_norm."""
    norm = g.op("Sqrt", g.op("Cast", g.op("ReduceSumSquare", grad, keepdims=0), to=F64))
    top = g.const(max_norm, np.float64)
    factor = g.op("Where", g.op("Greater", norm, top),
                  g.op("Div", top, g.op("Add", norm, g.const(1e-12, np.float64))), g.const(1.0, np.float64))
    return g.op("Mul", grad, g.op("Cast", factor, to=F32))


def _adam_coefficients(g: _Graph, optimizer: str, betas: tuple[float, float], eps: float) -> dict[str, str]:
    """Per-step scalars of optim.Adam for the whole epoch, in double as numpy computes them (outer graph)."""
    b1, b2 = betas
    steps = g.op("Shape", "lr")
    t = g.op("Cast", g.op("Add", g.op("Add", g.op("Range", g.const(0, np.int64), g.op("Squeeze", steps),
                                                   g.const(1, np.int64)), "step"), g.const(1, np.int64)), to=F64)
    one = g.const(1.0, np.float64)
    c1 = g.op("Sub", one, g.op("Pow", g.const(b1, np.float64), t))
    root_c2 = g.op("Sqrt", g.op("Sub", one, g.op("Pow", g.const(b2, np.float64), t)))
    out = {"alpha": g.op("Cast", g.op("Div", g.op("Mul", "lr", root_c2), c1), to=F32),     # lr sqrt(c2) / c1
           "eps": g.op("Cast", g.op("Mul", g.const(eps, np.float64), root_c2), to=F32)}     # eps sqrt(c2)
    if optimizer == "adamw":
        out["decay"] = g.op("Cast", g.op("Sub", one, g.op("Mul", "lr", "weight_decay")), to=F32)  # 1 - lr wd
    return out


def train_epoch_graph(layout: Layout, scale: float, *, task: str, batch_size: int, optimizer: str,
                      momentum: float = 0.9, clip_norm: float | None = None,
                      betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> onnx.ModelProto:
    """One epoch of mini-batch training over cached rows, as a single `Loop` (see kit.py for the contract)."""
    if optimizer not in ("sgd", "adam", "adamw"):
        raise ValueError(f"optimizer should be 'sgd', 'adam' or 'adamw', found {optimizer!r}")
    outer, body = _Graph("o"), _Graph("b")
    c, size = layout.num_outputs, layout.size
    coef = _adam_coefficients(outer, optimizer, betas, eps) if optimizer != "sgd" else \
        {"lr": outer.op("Cast", "lr", to=F32)}
    wd32 = outer.op("Cast", "weight_decay", to=F32)
    n = outer.op("Squeeze", outer.op("Shape", "perm"))
    trips = outer.op("Div", outer.op("Add", n, outer.const(batch_size - 1, np.int64)),
                     outer.const(batch_size, np.int64))

    # loop body: i, cond, params, opt_m, opt_v -> cond, params, opt_m, opt_v
    b = body
    start = b.op("Mul", b.op("Unsqueeze", "i", b.const([0], np.int64)), b.const([batch_size], np.int64))
    idx = b.op("Slice", "perm", start, b.op("Add", start, b.const([batch_size], np.int64)))
    p = _param_views(b, "params", layout)
    y, h, taps = _forward(b, b.op("Gather", "rows", idx), p, layout, scale)
    grad = _backward(b, _loss_grad(b, y, idx, task, c), h, taps, p, layout, scale)
    if clip_norm:
        grad = _clip(b, grad, clip_norm)
    if optimizer != "adamw":  # L2 decay added to the gradient (optim.SGD, optim.Adam)
        grad = b.op("Add", grad, b.op("Mul", wd32, "params"))
    _update(b, grad, coef, optimizer, momentum, betas)
    b.op("Identity", "cond", out="cond_next")
    vec = [helper.make_tensor_value_info(name, F32, [size]) for name in ("params", "opt_m", "opt_v")]
    vec_next = [helper.make_tensor_value_info(name, F32, [size]) for name in ("params_next", "m_next", "v_next")]
    body_graph = helper.make_graph(
        b.nodes, "step", [helper.make_tensor_value_info("i", I64, []), helper.make_tensor_value_info("cond", BOOL, [])]
        + vec, [helper.make_tensor_value_info("cond_next", BOOL, [])] + vec_next, b.inits)

    o = outer
    o.nodes.append(helper.make_node("Loop", [trips, "", "params", "opt_m", "opt_v"],
                                    ["params_out", "opt_m_out", "opt_v_out"], name="epoch", body=body_graph))
    o.op("Add", "step", trips, out="step_out")
    # 0 * x is NaN for any NaN or Inf: one reduction tells the client whether the epoch stayed finite
    o.op("Not", o.op("IsNaN", o.op("ReduceSum", o.op("Mul", "params_out", o.const(0.0, np.float32)), keepdims=0)),
         out="finite")
    return _model(helper.make_graph(o.nodes, "edgelora_train_epoch", *_epoch_io(layout, task), o.inits))


def _update(b: _Graph, grad: str, coef: dict, optimizer: str, momentum: float, betas: tuple[float, float]) -> None:
    """The optimiser step inside the epoch's loop body: params, opt_m, opt_v -> params_next, m_next, v_next."""
    if optimizer != "sgd":
        k = {name: b.op("Gather", v, "i") for name, v in coef.items()}
        m = b.op("Add", b.op("Mul", "opt_m", b.const(betas[0], np.float32)),
                 b.op("Mul", grad, b.const(1 - betas[0], np.float32)), out="m_next")
        v = b.op("Add", b.op("Mul", "opt_v", b.const(betas[1], np.float32)),
                 b.op("Mul", b.op("Mul", grad, grad), b.const(1 - betas[1], np.float32)), out="v_next")
        theta = b.op("Mul", "params", k["decay"]) if optimizer == "adamw" else "params"
        step = b.op("Mul", b.op("Div", m, b.op("Add", b.op("Sqrt", v), k["eps"])), k["alpha"])
        b.op("Sub", theta, step, out="params_next")
        return
    b.op("Identity", "opt_m", out="m_next")
    v = b.op("Add", b.op("Mul", "opt_v", b.const(momentum, np.float32)), grad, out="v_next") if momentum \
        else b.op("Identity", "opt_v", out="v_next")
    b.op("Sub", "params", b.op("Mul", b.op("Gather", coef["lr"], "i"), v if momentum else grad), out="params_next")


def _epoch_io(layout: Layout, task: str) -> tuple[list, list]:
    """The epoch graph's inputs and outputs (kit.py's contract)."""
    c, size = layout.num_outputs, layout.size
    inputs = [helper.make_tensor_value_info("rows", F32, ["N", c + sum(layout.widths)]),
              _targets_info(task, c),
              helper.make_tensor_value_info("class_weights", F32, [c]),
              helper.make_tensor_value_info("perm", I64, ["N"]),
              helper.make_tensor_value_info("lr", F64, ["steps"]),
              helper.make_tensor_value_info("weight_decay", F64, []),
              *[helper.make_tensor_value_info(name, F32, [size]) for name in ("params", "opt_m", "opt_v")],
              helper.make_tensor_value_info("step", I64, [])]
    if task != "classification":
        inputs = [i for i in inputs if i.name != "class_weights"]
    outputs = [helper.make_tensor_value_info(name, F32, [size]) for name in ("params_out", "opt_m_out", "opt_v_out")]
    outputs += [helper.make_tensor_value_info("step_out", I64, []), helper.make_tensor_value_info("finite", BOOL, [])]
    return inputs, outputs


def evaluate_graph(layout: Layout, scale: float, task: str) -> onnx.ModelProto:
    """Adapter outputs on cached rows and their unweighted mean loss (metrics.epoch_metrics)."""
    g, c = _Graph("e"), layout.num_outputs
    y, _, _ = _forward(g, "rows", _param_views(g, "params", layout), layout, scale)
    g.op("Identity", y, out="outputs")
    if task == "classification":  # in double, as in training: the same loss on every platform's kernels
        picked = g.op("GatherElements", g.op("LogSoftmax", g.op("Cast", y, to=F64), axis=1),
                      g.op("Unsqueeze", "targets", g.const([1], np.int64)), axis=1)
        g.op("Cast", g.op("Neg", g.op("ReduceMean", picked, keepdims=0)), to=F32, out="loss")
    else:
        d = g.op("Sub", y, "targets")
        g.op("ReduceMean", g.op("Mul", d, d), keepdims=0, out="loss")
    inputs = [helper.make_tensor_value_info("rows", F32, ["N", c + sum(layout.widths)]),
              _targets_info(task, c), helper.make_tensor_value_info("params", F32, [layout.size])]
    outputs = [helper.make_tensor_value_info("outputs", F32, ["N", c]), helper.make_tensor_value_info("loss", F32, [])]
    return _model(helper.make_graph(g.nodes, "edgelora_evaluate", inputs, outputs, g.inits))


def _targets_info(task: str, c: int) -> onnx.ValueInfoProto:
    if task == "classification":
        return helper.make_tensor_value_info("targets", I64, ["N"])
    return helper.make_tensor_value_info("targets", F32, ["N", c])


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                              producer_name="edgelora.graphs.kit")
    onnx.checker.check_model(model, full_check=True)
    return model
