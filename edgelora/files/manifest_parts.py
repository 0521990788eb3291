"""The parts of a bundle's manifest (bundle.py): its inputs, output and taps, the torch weights a deep
adapter targets, the per-input standardisation, and the batch-norm layers a device may re-calibrate."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .schema import check

INPUT_DTYPES = ("float32", "float16", "float64", "int64", "int32", "bool")
# how a conv feature map (N, C, L...) becomes a tap vector: per-channel means (C), means then standard
# deviations (2 C), or the means of S contiguous segments along the first spatial axis, channel-major (C S)
FEATURE_MAP_POOLINGS = ("global_avg", "global_avg_std", "segment_avg_2", "segment_avg_4", "segment_avg_8")
# statistics of a feature map a bundle may offer beside a tap's channel means (`tap_statistics`, docs/taps.md):
# the standard deviation of each channel (C), or the map kept whole, flattened channel-major (C L...)
TAP_STATISTICS = ("std", "map")
POOLINGS = ("none", "mean", "masked_mean") + FEATURE_MAP_POOLINGS + TAP_STATISTICS


@dataclass(frozen=True)
class InputSpec:
    name: str                                   # ONNX input name
    shape: tuple[int | str | None, ...]         # per-sample shape incl. batch dim first; str/None = dynamic
    dtype: str                                  # one of INPUT_DTYPES

    def __post_init__(self):
        check(self.dtype in INPUT_DTYPES, f"input `{self.name}`: dtype should be one of {INPUT_DTYPES}, found {self.dtype!r}")
        check(len(self.shape) >= 1, f"input `{self.name}`: shape needs at least the batch dimension")


@dataclass(frozen=True)
class OutputSpec:
    name: str                                   # ONNX output name
    width: int                                  # C: classes (classification) or targets (regression)

    def __post_init__(self):
        check(self.width >= 1, f"output `{self.name}`: `width` should be a positive integer, found {self.width}")


@dataclass(frozen=True)
class TapSpec:
    name: str                                   # tap name used by adapters (e.g. "fc1.input")
    output: str                                 # ONNX output carrying the pooled tap, shape (batch, width)
    width: int                                  # d_k
    pooling: str = "none"                       # how a feature map/sequence became a vector: POOLINGS
    source: str = ""                            # the tensor or module that was tapped (for humans)

    def __post_init__(self):
        check(self.width >= 1, f"tap `{self.name}`: `width` should be a positive integer, found {self.width}")
        check(self.pooling in POOLINGS, f"tap `{self.name}`: pooling should be one of {POOLINGS}, found {self.pooling!r}")


@dataclass(frozen=True)
class TapStatistic:
    """A further statistic of a tap's feature map, its own ONNX output: an adapter may read it beside the tap."""
    tap: str                                    # the tap (a `taps` name, pooled by `global_avg`) it describes
    statistic: str                              # one of TAP_STATISTICS
    output: str                                 # ONNX output carrying it, shape (batch, width)
    width: int                                  # C for std, C L... for map

    def __post_init__(self):
        check(self.statistic in TAP_STATISTICS, f"tap statistic of `{self.tap}`: `statistic` should be one of "
                                                f"{TAP_STATISTICS}, found {self.statistic!r}")
        check(self.width >= 1, f"tap statistic `{self.tap}:{self.statistic}`: `width` should be a positive "
                               f"integer, found {self.width}")


@dataclass(frozen=True)
class TorchWeight:
    """Which torch module's weight an ONNX initializer is (what a deep adapter's PEFT file names)."""
    initializer: str                            # the ONNX initializer holding the weight
    module: str                                 # the torch module's name in the exported model (e.g. "conv1")
    kind: str                                   # its class: Linear, Conv1d or Conv2d
    out_scale: tuple[float, ...] = ()           # per output channel: initializer = out_scale * torch weight
                                                # (a batch-norm folded in by the exporter); () = equal

    def __post_init__(self):
        check(self.kind in ("Linear", "Conv1d", "Conv2d"),
              f"torch weight `{self.initializer}`: kind should be Linear, Conv1d or Conv2d, found {self.kind!r}")
        check(all(v != 0 for v in self.out_scale), f"torch weight `{self.initializer}`: out_scale has a 0")


@dataclass(frozen=True)
class Standardize:
    mean: float | list                          # broadcast against one sample of the input
    std: float | list

    def __post_init__(self):
        for name in ("mean", "std"):
            try:
                a = np.asarray(getattr(self, name))
                if a.dtype.kind not in "iuf":  # strings would be parsed as numbers by a float64 cast
                    raise TypeError
                a = a.astype(np.float64)
            except (ValueError, TypeError, RecursionError):
                raise ValueError(f"preprocess `{name}` should be a number or a nested list of numbers") from None
            check(bool(np.isfinite(a).all()), f"preprocess `{name}` should be finite numbers")
        check(bool((np.asarray(self.std, np.float64) > 0).all()), "preprocess `std` should be > 0")


@dataclass(frozen=True)
class NormSpec:
    """A batch-norm layer kept addressable in the ONNX graph (export/batchnorm.py): where its statistics are,
    where its input's per-sample moments come out, and the statistics the graph uses (the lab's, or re-estimated)."""
    name: str                                   # the layer (torch module name)
    channels: int                               # C
    eps: float                                  # added to the variance
    mean_initializer: str                       # ONNX initializer holding the running mean (C,)
    var_initializer: str                        # ONNX initializer holding the running variance (C,)
    moments: str                                # output of the recalibration model (batch, 2 C): per sample, the
                                                # channel means of the layer's input, then of its square
    mean: list                                  # the running mean the graph uses (C floats)
    var: list                                   # the running variance (C floats, >= 0)

    def __post_init__(self):
        check(self.channels >= 1, f"normalization `{self.name}`: `channels` should be positive, found {self.channels}")
        for key in ("mean", "var"):
            a = np.asarray(getattr(self, key), np.float64)
            check(a.shape == (self.channels,) and bool(np.isfinite(a).all()),
                  f"normalization `{self.name}`: `{key}` should be {self.channels} finite numbers, found shape {a.shape}")
        check(min(self.var) >= 0 and self.eps > 0, f"normalization `{self.name}`: `var` should be >= 0 and `eps` > 0")


def as_preprocess(pre: dict | None, inputs: Sequence[str]) -> dict[str, Standardize]:
    """{input name: {"mean": m, "std": s} | (mean, std) | Standardize} -> {input name: Standardize}.

    Means and stds may be numbers, nested lists or arrays (stored as nested lists of float64)."""
    if pre is None:
        return {}
    if not isinstance(pre, dict):
        raise TypeError(f"preprocess: expected a dict {{input name: {{'mean': m, 'std': s}}}}, found "
                        f"{type(pre).__name__}")
    unknown = [k for k in pre if k not in inputs]
    if unknown:
        hint = " (an nn.Sequential's input is named `input`)" if "input" in inputs else ""
        raise ValueError(f"preprocess: names unknown input(s) {unknown}; the model's inputs are {list(inputs)}{hint}")
    return {name: _standardize(value, f"preprocess[{name!r}]") for name, value in pre.items()}


def _standardize(value, where: str) -> Standardize:
    if isinstance(value, Standardize):
        return value
    if isinstance(value, dict):
        if sorted(map(str, value)) != ["mean", "std"]:
            raise ValueError(f"{where}: expected keys ['mean', 'std'], found {sorted(map(str, value))}")
        pair = (value["mean"], value["std"])
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        pair = tuple(value)
    else:
        raise TypeError(f"{where}: expected {{'mean': m, 'std': s}} or a (mean, std) pair, found "
                        f"{type(value).__name__}{f' of length {len(value)}' if isinstance(value, (tuple, list)) else ''}")
    plain = []
    for key, v in zip(("mean", "std"), pair):
        try:
            a = np.asarray(v)
        except (ValueError, TypeError, RecursionError):  # ragged lists
            a = np.asarray([object()])
        if a.dtype.kind not in "iuf":
            raise TypeError(f"{where}: `{key}` should be a number or an array of numbers, found {type(v).__name__}"
                            f"{f' of dtype {a.dtype}' if a.dtype.kind != 'O' else ''}")
        plain.append(a.astype(np.float64).tolist())
    return Standardize(*plain)
