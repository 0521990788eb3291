"""One adapter as the server keeps it loaded: its forward pass prepared once (ops/serve.py serves it).

A small adapter becomes one matrix over a served row [y0 | taps | 1], M = [I; W; bias] (lora.folded), so
y = row @ M is a single product; bigger ones (MERGE_MAX_BYTES) keep the low-rank form; a deep adapter is
served by its own merged session.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core import lora
from ..files.adapter import Adapter
from ..files.deep_adapter import DeepAdapter
from ..runtime.backbone import Backbone

MERGE_MAX_BYTES = 1024**2  # adapters whose merged (D, C) weight fits this are served as one product


@dataclass
class LoadedAdapter:
    """A loaded adapter version (or the shared model), what it weighs, and when its pointer was last read."""
    version: int | None           # None: no published version, serving the shared model
    adapter: Adapter | None
    stamp: tuple                  # (inode, mtime_ns, size) of current.json when last read
    checked: float                # time.monotonic() of the last pointer check
    nbytes: int
    backbone: Backbone | None = None  # its own re-calibrated backbone (adapter_config `recalibration`), or None

    def __post_init__(self):
        """Prepare the forward pass once. A small adapter becomes one matrix over a served row
        [y0 | taps | 1], M = [I; W; bias] (lora.folded), so y = row @ M is a single product: at batch 1
        a small adapter costs a few numpy calls' overhead rather than its multiply-adds, so one call
        instead of K + 4 is what makes it cheap. Bigger adapters (MERGE_MAX_BYTES) keep the low-rank form."""
        a, self.deep, self.session = self.adapter, isinstance(self.adapter, DeepAdapter), None
        if self.deep:  # served by its own merged session (AdapterServer._deep_rows); no skip path
            a = None
        self.params = a.params if a is not None else None
        self.layout = a.config.layout if a is not None else None
        self.scale = a.config.scale if a is not None else 0.0
        self.M = self.MT = None
        if a is not None and _merged_bytes(self.layout) <= MERGE_MAX_BYTES:
            # (C, C+D+1): one row is faster at batch 1; M is its (C+D+1, C) view for batches
            self.MT = np.ascontiguousarray(lora.folded(self.params, self.layout, self.scale).T)
            self.M = self.MT.T
            self.nbytes += self.MT.nbytes

    def forward(self, rows: np.ndarray, c: int) -> np.ndarray:
        """Outputs (n, C) for served rows [y0 | taps | 1] (AdapterServer._rows); a deep adapter's rows are
        filled in afterwards from its own session."""
        if self.adapter is None or self.deep:
            return rows[:, :c]
        if self.M is None:
            return lora.forward(self.params, rows[:, :c], rows[:, c:-1], self.layout, self.scale)[0]
        if len(rows) == 1:
            return (self.MT @ rows[0])[None]
        return rows @ self.M


def _merged_bytes(layout: lora.Layout) -> int:
    return sum(layout.widths) * layout.num_outputs * 4


SHARED = LoadedAdapter(None, None, (), 0.0, 0)   # the shared model, no adapter

