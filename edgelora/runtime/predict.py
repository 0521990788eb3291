"""Inference: backbone + adapter -> outputs, probabilities, labels and metrics."""
from __future__ import annotations

import numpy as np

from ..core import lora
from ..core.losses import log_softmax
from ..core.metrics import evaluate_outputs
from ..files.adapter import Adapter
from ..files.data import as_inputs, as_targets, num_samples
from ..files.deep_adapter import DeepAdapter
from .backbone import Backbone


class Predictor:
    """Runs the frozen backbone and adds one adapter's skip paths (or none: the base model); a deep adapter
    runs as the backbone with the adapter folded into its weights (runtime/deep_session.py). An adapter trained
    on a re-calibrated backbone (its config's `recalibration`) runs over the backbone re-calibrated the same way,
    and one reading tap statistics (`tap_statistics`) over the backbone giving those."""

    def __init__(self, backbone: Backbone, adapter: Adapter | DeepAdapter | None = None, batch_size: int = 256):
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"`batch_size` should be a positive integer, found {batch_size!r}")
        self._deep = None
        if isinstance(adapter, DeepAdapter):
            from .deep_session import DeepSession
            self._deep = DeepSession(backbone, adapter)
        elif adapter is not None:
            backbone = backbone.for_adapter(adapter.config)  # the statistics the adapter was trained with
            adapter.check_backbone(backbone.manifest)
            # built once: rebuilding the layout and views per call cost more than the backbone at batch 1
            self._layout, self._params, self._scale = adapter.config.layout, adapter.params, adapter.config.scale
        self.backbone, self.adapter, self.batch_size = backbone, adapter, batch_size

    def outputs(self, x) -> np.ndarray:
        """Model outputs (N, C): logits for classification, values for regression."""
        inputs = as_inputs(x, self.backbone.manifest)
        if self._deep is not None:
            return self._deep.outputs(inputs, self.batch_size)
        n = num_samples(inputs)
        out = np.empty((n, self.backbone.num_outputs), np.float32)
        for a in range(0, n, self.batch_size):
            y0, t = self.backbone.features({k: v[a:a + self.batch_size] for k, v in inputs.items()}, validated=True)
            out[a:a + len(y0)] = self.apply(y0, t)
        return out

    def apply(self, y0: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Add the adapter to precomputed backbone results (e.g. from a SkipCache)."""
        if self._deep is not None:
            raise ValueError("a deep adapter changes the backbone's own layers: it cannot be added to cached "
                             "backbone results; use outputs(x)")
        if self.adapter is None:
            return y0
        return lora.forward(self._params, y0, t, self._layout, self._scale)[0]

    def predict_proba(self, x) -> np.ndarray:
        """Class probabilities (N, C)."""
        self._need_classes()
        return np.exp(log_softmax(self.outputs(x).astype(np.float64))).astype(np.float32)

    def predict(self, x) -> np.ndarray:
        """Class indices (classification) or values (regression)."""
        y = self.outputs(x)
        return y.argmax(axis=1) if self.backbone.manifest.task == "classification" else y

    def evaluate(self, x, y) -> dict[str, float]:
        """accuracy, macro_f1, loss (classification) or mse, mae, loss (regression)."""
        out = self.outputs(x)
        return evaluate_outputs(out, as_targets(y, self.backbone.manifest, len(out)), self.backbone.manifest.task)

    def _need_classes(self) -> None:
        if self.backbone.manifest.task != "classification":
            raise ValueError("probabilities need a classification backbone; this one does regression")
