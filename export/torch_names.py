"""Which torch module each ONNX weight initializer came from: what lets a deep adapter trained on the device
be saved under the torch model's own layer names (PEFT's layout) and loaded onto the original model.

The exporter names a Linear/Conv weight after its module (`model.conv1.weight`, `model.` being the tap
wrapper's attribute); with a batch-norm after the conv its constant folding stores the folded weight
(gamma / sigma per output channel times the conv's) under the same name. Both are recorded: the module name
and, when folded, that per-channel factor (an update of the ONNX weight is that factor times the update of
the torch weight, so the device divides it out when it writes PEFT's tensors).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper
from torch import nn

from edgelora.files.bundle import TorchWeight

KINDS = {nn.Linear: "Linear", nn.Conv1d: "Conv1d", nn.Conv2d: "Conv2d"}
PREFIX = "model."          # the tap wrapper (taps.TapModel) holds the user's model as `model`
TOLERANCE = 1e-4           # max |onnx - scale * torch| relative to max |onnx| for a folded weight


def torch_weights(model: nn.Module, proto: onnx.ModelProto, prefix: str = PREFIX) -> tuple[TorchWeight, ...]:
    """One TorchWeight per Linear/Conv1d/Conv2d module whose weight is an initializer of `proto` (plain or
    with a per-output-channel factor folded in); other modules are left out (a deep adapter cannot name them).
    prefix: the exported wrapper's path to the user's model."""
    inits = {i.name: i for i in proto.graph.initializer}
    found = []
    for name, module in model.named_modules():
        kind = KINDS.get(type(module))
        init = inits.get(f"{prefix}{name}.weight")
        if kind is None or init is None or getattr(module, "groups", 1) != 1:
            continue
        scale = _out_scale(numpy_helper.to_array(init).astype(np.float64),
                           module.weight.detach().double().numpy())
        if scale is not None:
            found.append(TorchWeight(init.name, name, kind, scale))
    return tuple(found)


def _out_scale(w_onnx: np.ndarray, w_torch: np.ndarray) -> tuple[float, ...] | None:
    """() when the weights are equal, the per-output-channel factor when one is folded in, None otherwise."""
    if w_onnx.shape != w_torch.shape:
        return None
    if np.array_equal(w_onnx, w_torch):
        return ()
    a, b = w_onnx.reshape(len(w_onnx), -1), w_torch.reshape(len(w_torch), -1)
    norm = (b * b).sum(axis=1)
    if (norm == 0).any():
        return None
    c = (a * b).sum(axis=1) / norm
    if (c == 0).any() or np.abs(a - c[:, None] * b).max() > TOLERANCE * max(1.0, np.abs(a).max()):
        return None
    return tuple(float(v) for v in c)
