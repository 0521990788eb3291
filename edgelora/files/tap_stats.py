"""Which statistics of its feature-map taps an adapter reads: the manifest an adapter sees for a choice.

A bundle may offer, beside each feature-map tap's channel means, further statistics as ONNX outputs of their
own (Manifest.tap_statistics: the channel standard deviations, or a small map kept whole). An adapter reads
its taps plus a chosen set of those statistics; each statistic it reads is one more skip path, a tap named
`<tap>:<statistic>` just before its tap. `view` is the manifest of such a choice: it still lists what
the bundle offers (so any view gives any other), and its identity is its own, so caches and adapters of
different choices never mix. The lab's manifest is the view that reads none.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from .bundle import TAP_STATISTICS, Manifest, TapSpec
from .schema import check

SEPARATOR = ":"  # "<tap>:<statistic>" names a statistic's skip path


def offered(manifest: Manifest) -> tuple[str, ...]:
    """The statistics a bundle offers (in TAP_STATISTICS order); () for an older bundle."""
    have = {s.statistic for s in manifest.tap_statistics}
    return tuple(s for s in TAP_STATISTICS if s in have)


def chosen(manifest: Manifest) -> tuple[str, ...]:
    """The statistics a view's taps read (TAP_STATISTICS order): what an adapter over it records."""
    own = set(own_taps(manifest))
    have = {t.pooling for t in manifest.taps if t not in own}
    return tuple(s for s in TAP_STATISTICS if s in have)


def view(manifest: Manifest, statistics: Sequence[str] | None = None, where: str = "tap statistics") -> Manifest:
    """The manifest (the lab's or any view) whose taps are the bundle's own with each offered statistic in
    `statistics` (None: every offered one) just before its tap. A bundle offering none is returned as it is (an older bundle);
    asking for a statistic the bundle does not offer is refused."""
    if not manifest.tap_statistics:
        check(not statistics, f"{where}: asks for tap statistic(s) {list(statistics or ())}, which the bundle does "
                              f"not offer (it offers none); use the bundle it was trained on")
        return manifest
    have = offered(manifest)
    wanted = have if statistics is None else tuple(statistics)
    unknown = [s for s in wanted if s not in have]
    check(not unknown, f"{where}: asks for tap statistic(s) {unknown}, which the bundle does not offer (it offers "
                       f"{list(have)}); use the bundle it was trained on, or re-export the backbone with them")
    extra = {t.name: [TapSpec(f"{s.tap}{SEPARATOR}{s.statistic}", s.output, s.width, s.statistic,
                              f"{s.statistic} of {s.tap}") for s in manifest.tap_statistics
                      if s.tap == t.name and s.statistic in wanted] for t in own_taps(manifest)}
    # each statistic just before its tap: the last tap stays the bundle's (the last-layer form reads it)
    return dataclasses.replace(manifest, taps=tuple(x for t in own_taps(manifest) for x in extra[t.name] + [t]),
                               checksum="")


def own_taps(manifest: Manifest) -> tuple[TapSpec, ...]:
    """The bundle's own taps of a manifest or view (without the statistics' skip paths)."""
    return tuple(t for t in manifest.taps if not (t.pooling in TAP_STATISTICS and SEPARATOR in t.name))


def columns(full: Manifest, part: Manifest) -> np.ndarray:
    """Indices into a row [y0 | taps] of `full` of the columns [y0 | taps] of `part`, a view with a subset of
    its taps (in `part`'s order)."""
    ends = np.cumsum((full.num_outputs,) + full.tap_widths)
    span = {t.name: np.arange(a, b) for t, a, b in zip(full.taps, ends[:-1], ends[1:])}
    missing = [t.name for t in part.taps if t.name not in span]
    assert not missing, f"taps {missing} are not among {list(span)}"
    return np.concatenate([np.arange(full.num_outputs)] + [span[t.name] for t in part.taps])
