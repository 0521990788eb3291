"""The crash benchmark's set-up (device_bench/crash.py): the trace hook the killed child runs, a toy backbone
and data, and Bench, which runs `edgelora finetune` with the hook and knows an uninterrupted run's steps."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SAMPLES = 4000          # tiny data, so a run is short and many trials fit in a few minutes
WIDTHS = [32, 128, 128, 4]  # the MLP backbone: input, hidden, hidden, classes
EPOCHS = 6
REPO = Path(__file__).resolve().parents[1]


# --- the hook, run inside the child by its sitecustomize -----------------------------------------------

def install_hook() -> None:
    """Trace file-system steps with their phase; SIGKILL this process before step EDGELORA_CRASH_AT."""
    trace = open(os.environ["EDGELORA_CRASH_TRACE"], "a", buffering=1)
    kill_at = int(os.environ.get("EDGELORA_CRASH_AT", "0"))
    phase, count, t0 = ["startup"], [0], time.perf_counter()

    def step(op: str, fn):
        def wrapped(*args, **kwargs):
            count[0] += 1
            trace.write(f"step {count[0]} {phase[-1]} {op} {time.perf_counter() - t0:.4f}\n")
            if count[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return fn(*args, **kwargs)
        return wrapped

    def within(name: str, fn, after: str | None = None):
        def wrapped(*args, **kwargs):
            phase.append(name)
            trace.write(f"phase {name} {time.perf_counter() - t0:.4f}\n")
            try:
                return fn(*args, **kwargs)
            finally:
                phase.pop()
                if after:
                    phase[-1] = after
                trace.write(f"phase {phase[-1]} {time.perf_counter() - t0:.4f}\n")
        return wrapped

    for name in ("fsync", "replace", "rename", "truncate", "unlink", "rmdir"):
        setattr(os, name, step(name, getattr(os, name)))
    from edgelora.files import adapter, fileio
    from edgelora.runtime import cache, train
    from edgelora.core import loop
    fileio._exchange = step("exchange", fileio._exchange)
    cache.SkipCache.rows = within("cache", cache.SkipCache.rows, after="setup")
    loop.fit = within("training", loop.fit, after="setup")
    train.save_checkpoint = within("checkpoint", train.save_checkpoint)
    adapter.Adapter.save = within("adapter", adapter.Adapter.save, after="exit")


SITECUSTOMIZE = "import os\nif os.environ.get('EDGELORA_CRASH_TRACE'):\n" \
                "    from device_bench.crash_setup import install_hook\n    install_hook()\n"


# --- set-up --------------------------------------------------------------------------------------------

def make_bundle(folder: Path, seed: int = 0):
    """A random MLP backbone whose Linear inputs are the taps (written with onnx.helper, no torch)."""
    from onnx import TensorProto, helper, numpy_helper

    from edgelora.files.bundle import BUNDLE_FORMAT_VERSION, InputSpec, Manifest, OutputSpec, TapSpec, write_bundle
    rng = np.random.default_rng(seed)
    nodes, inits, outs, taps, h = [], [], [], [], "x"
    for i, (a, b) in enumerate(zip(WIDTHS[:-1], WIDTHS[1:])):
        inits += [numpy_helper.from_array((rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(np.zeros(b, np.float32), f"b{i}")]
        nodes += [helper.make_node("Identity", [h], [f"tap{i}"]), helper.make_node("Gemm", [h, f"w{i}", f"b{i}"], [f"z{i}"])]
        outs.append(helper.make_tensor_value_info(f"tap{i}", TensorProto.FLOAT, ["N", a]))
        taps.append(TapSpec(f"fc{i}.input", f"tap{i}", a))
        h = f"z{i}"
        if i < len(WIDTHS) - 2:
            nodes.append(helper.make_node("Relu", [h], [f"r{i}"]))
            h = f"r{i}"
    nodes.append(helper.make_node("Identity", [h], ["logits"]))
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", WIDTHS[0]])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", WIDTHS[-1]])] + outs,
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    c = WIDTHS[-1]
    manifest = Manifest(format_version=BUNDLE_FORMAT_VERSION, fingerprint="sha256:" + "0" * 64,
                        inputs=(InputSpec("x", ("N", WIDTHS[0]), "float32"),), output=OutputSpec("logits", c),
                        taps=tuple(taps), task="classification", classes=tuple(f"c{i}" for i in range(c)))
    return write_bundle(folder, model.SerializeToString(), manifest)


def make_data(path: Path, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    c = WIDTHS[-1]
    centres = rng.standard_normal((c, WIDTHS[0])) * 2
    y = rng.integers(0, c, SAMPLES)
    x = (centres[y] + rng.standard_normal((SAMPLES, WIDTHS[0]))).astype(np.float32)
    np.savez(path, x=x, y=y)
    return x, y


class Bench:
    """The shared set-up: bundle, data, OLD adapter, reference adapter, pre-filled caches, event lists."""

    def __init__(self, root: Path):
        from edgelora import Backbone, SkipCache
        self.root = root
        self.bundle, self.data = root / "bundle", root / "train.npz"
        make_bundle(self.bundle)
        self.x, self.y = make_data(self.data)
        self.hook = root / "hook"
        self.hook.mkdir()
        (self.hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
        backbone = Backbone(self.bundle)
        self.manifest = backbone.manifest
        self.features = backbone.features(self.x)
        # OLD: what the device had before this fine-tune (another seed); REF: the uninterrupted result
        self.old, self.ref = root / "old", root / "ref"
        self.run(self.command(self.old, root / "ref-cache", root / "old-ckpt", seed=1), check=True)
        self.run(self.command(self.ref, root / "ref-cache", root / "ref-ckpt"), check=True)
        self.old_bytes = {p.name: p.read_bytes() for p in self.old.iterdir()}
        from edgelora import load_adapter
        self.ref_flat = load_adapter(self.ref).flat
        # starting caches: empty, half filled (the first half of the samples), full
        self.caches = {"empty": None, "half": root / "cache-half", "full": root / "ref-cache"}
        SkipCache(Backbone(self.bundle), self.caches["half"]).rows(self.x[:SAMPLES // 2])
        self.events, self.seconds, self.work_starts = {}, {}, {}
        for name in self.caches:  # a traced, uninterrupted run per starting cache lists its steps
            work = self.trial_dir(f"dry-{name}", name)
            trace = work / "trace.txt"
            t0 = time.perf_counter()
            self.run(self.command(work / "out", work / "cache", work / "ckpt"), trace=trace, check=True)
            self.seconds[name] = time.perf_counter() - t0
            lines = [line.split() for line in trace.read_text().splitlines()]
            self.events[name] = [w[2:4] for w in lines if w[0] == "step"]
            self.work_starts[name] = next(float(w[-1]) for w in lines if w[0] == "phase")  # end of start-up

    def command(self, out: Path, cache: Path, ckpt: Path, seed: int = 0) -> list[str]:
        exe = Path(sys.executable).with_name("edgelora")
        head = [str(exe)] if exe.exists() else [sys.executable, "-m", "edgelora.cli"]
        return head + ["finetune", str(self.bundle), "--data", str(self.data), "--out", str(out), "--cache-dir",
                       str(cache), "--checkpoint-dir", str(ckpt), "--resume", "--epochs", str(EPOCHS),
                       "--seed", str(seed), "--json"]

    def env(self, trace: Path | None, kill_at: int = 0) -> dict:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(self.hook), str(REPO)]), "OMP_NUM_THREADS": "1"}
        env.pop("EDGELORA_CRASH_AT", None)
        env.pop("EDGELORA_CRASH_TRACE", None)
        if trace is not None:
            env["EDGELORA_CRASH_TRACE"] = str(trace)
        if kill_at:
            env["EDGELORA_CRASH_AT"] = str(kill_at)
        return env

    def run(self, cmd, trace: Path | None = None, kill_at: int = 0, kill_after: float | None = None,
            check: bool = False) -> tuple[int, str, str]:
        p = subprocess.Popen(cmd, env=self.env(trace, kill_at), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        if kill_after is not None:
            try:
                p.wait(kill_after)
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGKILL)
        out, err = p.communicate(timeout=300)
        if check and p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {err}")
        return p.returncode, out, err

    def trial_dir(self, name: str, cache: str) -> Path:
        work = self.root / name
        work.mkdir()
        shutil.copytree(self.old, work / "out")
        if self.caches[cache] is not None:
            shutil.copytree(self.caches[cache], work / "cache")
        return work
