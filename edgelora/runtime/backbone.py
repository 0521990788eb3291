"""The frozen backbone: an onnxruntime session over a bundle that returns base output and taps."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..files.bundle import Manifest, checked_model, load_manifest, model_path, read_external, read_recalibration_model
from ..files.data import as_inputs, num_samples
from ..files.fileio import PathLike
from ..files.memory import release_library
from ..files.recalibration import Recalibration, recalibrated
from ..files.tap_stats import view
from . import stop

RUN_TIME_LIMIT = 600.0  # seconds one run of the backbone (a batch) may take before it is stopped
UNSAFE_WITH_OVERRIDES = ("ConvBNFusion", "ConstantFolding")  # graph optimisers blind to add_initializer
MOMENTS_BATCH = 16      # samples per run of the batch-norm moments model: its activations are whole feature maps


class NonFiniteError(ValueError):
    """The backbone computed NaN or Inf for some samples: `samples`, their positions in what was run."""

    def __init__(self, where: str, samples):
        self.where, self.samples = where, np.asarray(samples, np.int64)
        shown = ", ".join(map(str, self.samples[:10].tolist())) + (", ..." if len(self.samples) > 10 else "")
        super().__init__(f"{where}: the backbone computed NaN or Inf for {len(self.samples)} sample(s) ({shown}; "
                         f"counted from 0); nothing was cached for them - check those inputs (values far out of "
                         f"range?) or the model")

    def within(self, index) -> "NonFiniteError":
        """The same error for a caller that ran the subset `index` of its samples: positions mapped back."""
        return NonFiniteError(self.where, np.asarray(index)[self.samples])


class Backbone:
    """Forward-only ONNX backbone. `run(x)` -> (base output (N, C), [tap_k (N, d_k)]), float32.

    With a `recalibration` (files/recalibration.py) it uses those statistics instead of the lab's: the input
    standardisation before the graph, and batch-norm statistics as initializers given to onnxruntime
    (SessionOptions.add_initializer: the ONNX file is not rewritten). Its `identity` is then its own.

    A bundle offering tap statistics (files/tap_stats.py) gives its taps followed by the `statistics` asked for
    (None: every one offered; one forward computes them all), a view with its own identity."""

    def __init__(self, bundle_dir: PathLike, threads: int = 1, batch_size: int = 64,
                 recalibration: Recalibration | None = None, time_limit: float | None = RUN_TIME_LIMIT,
                 statistics: tuple[str, ...] | None = None):
        if not isinstance(threads, int) or threads < 1:
            raise ValueError(f"`threads` should be a positive integer, found {threads!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` should be a positive integer, found {batch_size!r}")
        if time_limit is not None and not time_limit > 0:
            raise ValueError(f"`time_limit` should be a number of seconds > 0 or None, found {time_limit!r}")
        self.bundle_dir, self.threads, self.time_limit = Path(bundle_dir), threads, time_limit
        self.lab_manifest: Manifest = load_manifest(bundle_dir)
        self.recalibration = recalibration if recalibration is not None and not recalibration.empty else None
        self.manifest: Manifest = view(recalibrated(self.lab_manifest, self.recalibration, f"bundle {bundle_dir}"),
                                       statistics, f"bundle {bundle_dir}")
        self.statistics = statistics
        self._identity = self.manifest.identity
        self.batch_size = batch_size
        self._overrides = _overrides(self.manifest, self.recalibration)  # kept alive as long as the sessions
        path = model_path(bundle_dir, self.lab_manifest)
        with checked_model(bundle_dir, self.lab_manifest) as (model, external):
            self._session = self._open(model, external, path)
        self._moments_session = None   # the recalibration model, opened when moments are first asked for
        self._check_graph()
        self._outputs = [self.manifest.output.name] + [t.output for t in self.manifest.taps]
        ends = np.cumsum((0, self.manifest.num_outputs) + self.manifest.tap_widths).tolist()
        self._spans = list(zip(ends[:-1], ends[1:]))  # columns of each output in a row
        self._pre = {name: (np.asarray(p.mean, np.float32), np.asarray(p.std, np.float32))
                     for name, p in self.manifest.preprocess.items()}

    def _open(self, model: str | bytes, external: dict[str, bytes], path: Path,
              arena: bool = True) -> ort.InferenceSession:
        """An onnxruntime session over `model` (the checked file at `path`, named by files/bundle.checked_model,
        or its bytes) with this backbone's statistics; `external`: the model's external-data files as checked
        bytes (never read from a path onnxruntime resolves itself). `arena` False: memory handed back after
        each run (the moments model's whole feature maps would otherwise stay held by onnxruntime's arena)."""
        opts = ort.SessionOptions()
        for name, value in self._overrides.items():
            opts.add_initializer(name, value)
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        opts.enable_cpu_mem_arena = arena
        if external:
            if not hasattr(opts, "add_external_initializers_from_files_in_memory"):
                raise ValueError(f"bundle {self.bundle_dir} keeps weights in {sorted(external)}, which needs a newer "
                                 f"onnxruntime (found {ort.__version__}); upgrade onnxruntime")
            opts.add_external_initializers_from_files_in_memory(
                list(external), [np.frombuffer(b, np.uint8) for b in external.values()], [len(b) for b in external.values()])
        # onnxruntime's Conv + BatchNormalization fusion (and constant folding) read the file's initializers, not
        # the ones given here (measured with onnxruntime 1.32: outputs off by 1.1 with them on): a re-calibrated
        # session runs without them; tests/test_recalibrate.py checks its outputs against torch
        extra = {"disabled_optimizers": list(UNSAFE_WITH_OVERRIDES)} if self._overrides else {}
        # onnxruntime's code that its import and the graph's loading ran, mapped (10-20 MB) though running the
        # graph needs a small part of it: handed back before and after (files/memory.release_library)
        release_library("onnxruntime")
        try:
            session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"], **extra)
        except Exception as e:  # onnxruntime raises its own exception types for unloadable models
            raise ValueError(f"onnxruntime cannot load {path}: {e}") from None
        release_library("onnxruntime")
        return session

    def recalibrated(self, recalibration: Recalibration | None) -> Backbone:
        """The same bundle with `recalibration`'s statistics (a new session; None: the lab's)."""
        return Backbone(self.bundle_dir, self.threads, self.batch_size, recalibration, self.time_limit, self.statistics)

    def for_adapter(self, config) -> Backbone:
        """This backbone, or the same bundle with the statistics an adapter config (files/adapter.py) was trained
        with: its `recalibration` and the `tap_statistics` it reads."""
        rc = getattr(config, "recalibration", None)
        stats = tuple(config.tap_statistics) if hasattr(config, "tap_statistics") else self.statistics  # deep: any
        if self.recalibration == rc and (stats is None or view(self.manifest, stats).identity == self.identity):
            return self
        return Backbone(self.bundle_dir, self.threads, self.batch_size, rc, self.time_limit, stats)

    def moments(self, x, layer: str, validated: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Mean over the samples of batch-norm `layer`'s input, and of its square, per channel (C,) float64."""
        spec = {n.name: n for n in self.manifest.normalization}.get(layer)
        if spec is None:
            raise ValueError(f"bundle {self.bundle_dir}: no batch-norm layer `{layer}`; it records "
                             f"{[n.name for n in self.manifest.normalization]}")
        inputs = x if validated else as_inputs(x, self.manifest)
        if self._moments_session is None:
            m = self.lab_manifest
            blob = read_recalibration_model(self.bundle_dir, m)
            self._moments_session = self._open(blob, read_external(self.bundle_dir, m, blob),
                                               self.bundle_dir / m.recalibration_model["file"], arena=False)
        n, total = num_samples(inputs), np.zeros(2 * spec.channels)
        step = min(self.batch_size, MOMENTS_BATCH)
        for a in range(0, n, step):
            feed = {k: self._prep(k, v[a:a + step]) for k, v in inputs.items()}
            total += self._moments_session.run([spec.moments], feed)[0].sum(axis=0, dtype=np.float64)
        total /= max(n, 1)
        return total[:spec.channels], total[spec.channels:]

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the ONNX file."""
        return self.manifest.fingerprint

    @property
    def identity(self) -> str:
        """What caches and adapters are bound to (Manifest.identity)."""
        return self._identity

    @property
    def tap_widths(self) -> tuple[int, ...]:
        return self.manifest.tap_widths

    @property
    def num_outputs(self) -> int:
        return self.manifest.num_outputs

    def run(self, x) -> tuple[np.ndarray, list[np.ndarray]]:
        """Base output and every tap for a batch of samples, in manifest order."""
        y0, t = self.features(x)
        bounds = np.cumsum((0,) + self.tap_widths)
        return y0, [t[:, a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def features(self, x, validated: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(y0 (N, C), taps concatenated (N, sum d_k)) float32: views into `rows(x)`."""
        r = self.rows(x, validated)
        return r[:, :self.num_outputs], r[:, self.num_outputs:]

    def rows(self, x, validated: bool = False, out: np.ndarray | None = None) -> np.ndarray:
        """[y0 | tap_1 | ... | tap_K] (N, C + sum d_k) float32, computed in chunks of `batch_size`.

        One buffer written in place (no concatenation): `out` when given (say, the leading columns of a
        wider buffer), else a new one.
        """
        inputs = x if validated else as_inputs(x, self.manifest)
        n = num_samples(inputs)
        spans = self._spans
        shape = (n, spans[-1][1])
        if out is not None and (out.shape != shape or out.dtype != np.float32):
            raise ValueError(f"`out` should be a float32 array of shape {shape}, found {out.dtype} {out.shape}")
        r = np.empty(shape, np.float32) if out is None else out
        for a in range(0, n, self.batch_size):
            feed = {k: self._prep(k, v[a:a + self.batch_size]) for k, v in inputs.items()}
            outs = self._run(feed, f"samples {a}..{min(a + self.batch_size, n) - 1}")
            m = len(outs[0])
            for o, (lo, hi) in zip(outs, spans):
                r[a:a + m, lo:hi] = o
            self._check_finite(r[a:a + m], a)
        return r

    def _run(self, feed: dict, which: str) -> list[np.ndarray]:
        """One onnxruntime run, stopped after `time_limit` s or by Ctrl-C/SIGTERM (runtime/stop.py)."""
        with stop.limited(self.time_limit) as options:
            try:
                return self._session.run(self._outputs, feed, options)
            except Exception as e:  # onnxruntime's own types: out-of-range token ids, inconsistent shapes, ...
                if options.terminate:  # the time limit, or Ctrl-C/SIGTERM (whose handler runs next)
                    raise ValueError(f"bundle {self.bundle_dir}: the backbone was stopped on {which}: it ran for "
                                     f"more than the time limit of {self.time_limit:g} s, or was interrupted (a "
                                     f"model that loops without end?)") from None
                raise ValueError(f"bundle {self.bundle_dir}: the backbone failed on {which}: {e}; check the input "
                                 f"values (token ids within the vocabulary, say) and shapes") from None

    def _check_finite(self, rows: np.ndarray, first: int) -> None:
        """Refuse NaN or Inf in the backbone's outputs, naming the samples, before anything uses or caches them."""
        bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
        if len(bad):
            raise NonFiniteError(f"bundle {self.bundle_dir}", first + bad)

    def _prep(self, name: str, v: np.ndarray) -> np.ndarray:
        if name not in self._pre:
            return v
        mean, std = self._pre[name]
        return ((v - mean) / std).astype(v.dtype, copy=False)

    def _check_graph(self) -> None:
        """The manifest must describe this ONNX graph: same inputs and outputs, same widths."""
        m, where = self.manifest, f"bundle {self.bundle_dir}"
        have_in = {i.name: i for i in self._session.get_inputs()}
        for spec in m.inputs:
            if spec.name not in have_in:
                raise ValueError(f"{where}: manifest input `{spec.name}` is not an input of the ONNX graph "
                                 f"(graph inputs: {sorted(have_in)})")
        have_out = {o.name: o for o in self._session.get_outputs()}
        for name, width in [(m.output.name, m.output.width)] + [(t.output, t.width) for t in m.taps]:
            if name not in have_out:
                raise ValueError(f"{where}: manifest output `{name}` is not an output of the ONNX graph "
                                 f"(graph outputs: {sorted(have_out)})")
            shape = have_out[name].shape
            if len(shape) != 2 or (isinstance(shape[1], int) and shape[1] != width):
                raise ValueError(f"{where}: output `{name}` should have shape (batch, {width}), "
                                 f"the graph says {shape}")


def _overrides(m: Manifest, rc: Recalibration | None) -> dict[str, ort.OrtValue]:
    """Initializers replacing the lab's batch-norm statistics (none without a re-calibration of them)."""
    if rc is None or not rc.normalization:
        return {}
    return {name: ort.OrtValue.ortvalue_from_numpy(np.asarray(values, np.float32))
            for spec in m.normalization for name, values in ((spec.mean_initializer, spec.mean),
                                                             (spec.var_initializer, spec.var))}
