"""A re-calibration: normalisation statistics re-estimated on a device's own samples, and what it does to a bundle.

A bundle records the lab's statistics: the input standardisation (`preprocess`) and, for each batch-norm
layer kept addressable by the export, its running mean and variance (`normalization`). A Recalibration holds
new values for some of them; `recalibrated(manifest, rc)` is the manifest of the backbone that uses them. Its
`identity` differs from the lab backbone's, so cache rows and adapters of the two never mix. Adapters trained
on a re-calibrated backbone carry their Recalibration in `adapter_config.json` (field `recalibration`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from .bundle import Manifest, Standardize, as_preprocess
from .schema import check

KINDS = ("none", "input", "bn", "both")   # what a candidate re-estimates: nothing, the inputs, batch-norm, both


@dataclass(frozen=True)
class LayerStats:
    """Re-estimated statistics of one batch-norm layer (what PyTorch's train mode normalises with)."""
    mean: list                                  # C floats
    var: list                                   # C floats >= 0 (biased: mean of squared deviations)

    def __post_init__(self):
        m, v = np.asarray(self.mean, np.float64), np.asarray(self.var, np.float64)
        check(m.ndim == 1 and m.shape == v.shape, f"layer statistics: `mean` and `var` should be two lists of the "
                                                  f"same length, found shapes {m.shape} and {v.shape}")
        check(bool(np.isfinite(m).all() and np.isfinite(v).all() and (v >= 0).all()),
              "layer statistics: `mean` should be finite and `var` finite and >= 0")


@dataclass(frozen=True)
class Recalibration:
    """Statistics estimated on `samples` device samples (labelled or not) that replace the lab's."""
    kind: str = "none"                          # one of KINDS
    samples: int = 0                            # how many samples they were estimated on
    preprocess: dict[str, Standardize] = field(default_factory=dict)     # input name -> (x - mean) / std
    normalization: dict[str, LayerStats] = field(default_factory=dict)   # batch-norm layer -> mean, var

    def __post_init__(self):
        check(self.kind in KINDS, f"recalibration `kind` should be one of {KINDS}, found {self.kind!r}")
        check(self.samples >= 0, f"recalibration `samples` should be >= 0, found {self.samples}")

    @property
    def empty(self) -> bool:
        return not self.preprocess and not self.normalization


def constant_shape(s: Standardize) -> tuple[int, ...]:
    """The shape of a standardisation's constants: its mean and std broadcast together."""
    return tuple(np.broadcast_shapes(np.shape(s.mean), np.shape(s.std)))


def recalibrated(manifest: Manifest, rc: Recalibration | None, where: str = "recalibration") -> Manifest:
    """The manifest of `manifest`'s backbone using the statistics of `rc` (the same manifest when there are
    none). Refuses statistics for inputs or layers the bundle does not have, or of another shape."""
    if rc is None or rc.empty:
        return manifest
    lab = manifest.preprocess
    unknown = sorted(set(rc.preprocess) - set(lab))
    check(not unknown, f"{where}: re-estimates the standardisation of input(s) {unknown}, expected only inputs the "
                       f"bundle standardises: {sorted(lab)}")
    for name, s in as_preprocess(rc.preprocess, [i.name for i in manifest.inputs]).items():
        want = constant_shape(lab[name])
        for key in ("mean", "std"):
            found = np.shape(getattr(s, key))
            check(found == want, f"{where}: input `{name}` `{key}` should have shape {want} (the bundle's "
                                 f"standardisation), found {found}")
    layers = {n.name: n for n in manifest.normalization}
    unknown = sorted(set(rc.normalization) - set(layers))
    check(not unknown, f"{where}: re-estimates batch-norm layer(s) {unknown}, expected only layers the bundle "
                       f"records: {sorted(layers)}")
    norms = []
    for spec in manifest.normalization:
        st = rc.normalization.get(spec.name)
        if st is not None:
            check(len(st.mean) == spec.channels, f"{where}: layer `{spec.name}` should have {spec.channels} "
                                                 f"channels, found {len(st.mean)}")
            spec = dataclasses.replace(spec, mean=list(st.mean), var=list(st.var))
        norms.append(spec)
    return dataclasses.replace(manifest, preprocess={**lab, **rc.preprocess}, normalization=tuple(norms), checksum="")
