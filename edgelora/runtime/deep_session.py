"""A deep adapter at serving time: the backbone with the adapter folded into its weights (graphs/deep_merge.py),
in its own onnxruntime session; the input standardisation is the Backbone's own (same float32 arithmetic). An
adapter trained over re-calibrated statistics (its config's `recalibration`) runs with them."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort

from ..files.data import num_samples
from ..files.deep_adapter import DeepAdapter
from ..graphs.deep_merge import deep_model
from ..graphs.onnx_utils import conservative, serialize
from .backbone import Backbone


class DeepSession:
    """outputs(inputs) -> (N, C) of backbone + deep adapter, for inputs already checked (files/data.as_inputs)."""

    def __init__(self, backbone: Backbone, adapter: DeepAdapter, threads: int = 1):
        rc = adapter.config.recalibration
        backbone = backbone.recalibrated(rc) if backbone.recalibration != rc else backbone
        adapter.check_backbone(backbone.lab_manifest)
        self.backbone, self.adapter = backbone, adapter
        blob = serialize(conservative(deep_model(backbone.bundle_dir, backbone.manifest, adapter)))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
        self._session = ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])

    def outputs(self, inputs: dict[str, np.ndarray], batch_size: int = 256) -> np.ndarray:
        n, name = num_samples(inputs), self.backbone.manifest.output.name
        out = np.empty((n, self.backbone.num_outputs), np.float32)
        for a in range(0, n, batch_size):
            feed = {k: self.backbone._prep(k, v[a:a + batch_size]) for k, v in inputs.items()}
            out[a:a + batch_size] = self._session.run([name], feed)[0]
        return out
