"""Crash safety: SIGKILL `edgelora finetune` at random moments and check that nothing is ever lost.

    python -m device_bench.crash                       # the full run: 60 trials, prints the figures
    python -m device_bench.crash --trials 6 --json     # what tests/test_crash_safety.py runs

Each trial starts from a folder holding a previously saved adapter (OLD) and a Skip-Cache that is
empty, half filled or full, then runs `edgelora finetune BUNDLE --data D --out OUT --cache-dir C
--checkpoint-dir K --resume` and kills it with SIGKILL - at a random time over the whole run, or at
a chosen file-system step (fsync, rename, exchange, unlink, truncate) while the cache, a checkpoint
or the adapter is being written - then reruns the same command until one run completes (a rerun is
itself killed again with probability RE_KILL). After every kill it checks that:
  - OUT loads with `edgelora.load_adapter` and is byte for byte OLD or exactly the new adapter;
  - the checkpoint folder loads (or is absent), never half-written;
  - a copy of the cache opens, and every row it keeps equals the backbone's output bit for bit;
and after the run that completes, that the adapter is bit-identical to an uninterrupted run's (same
seed), the cache holds every sample exactly, and no temp file is left behind.

Phases are labelled by a trace hook that only this script installs (a `sitecustomize` on the child's
PYTHONPATH when EDGELORA_CRASH_TRACE is set): it logs each file-system step with the phase it belongs
to (startup, cache, setup, training, checkpoint, adapter, exit) and, with EDGELORA_CRASH_AT=N, kills the
process with SIGKILL just before step N. edgelora itself has no hook.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

TRIALS = 60             # the issue asks for at least 50
SAMPLES = 4000          # tiny data, so a run is short and many trials fit in a few minutes
WIDTHS = [32, 128, 128, 4]  # the MLP backbone: input, hidden, hidden, classes
EPOCHS = 6
RE_KILL = 0.3           # chance that a rerun is killed again
STEP_EVERY = 2          # every 2nd trial is first killed at a file-system step, the others at a random time
WRITE_PHASES = ("cache", "checkpoint", "adapter")
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
    loop.Run.fit = within("training", loop.Run.fit, after="setup")
    train.save_checkpoint = within("checkpoint", train.save_checkpoint)
    adapter.Adapter.save = within("adapter", adapter.Adapter.save, after="exit")


SITECUSTOMIZE = "import os\nif os.environ.get('EDGELORA_CRASH_TRACE'):\n" \
                "    from device_bench.crash import install_hook\n    install_hook()\n"


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


# --- checks --------------------------------------------------------------------------------------------

def check_after_kill(bench: Bench, work: Path) -> dict:
    """The state a kill left: which adapter OUT holds, whether anything partial would be taken as valid."""
    from edgelora import Backbone, SkipCache, load_adapter
    from edgelora.files.checkpoint import load_checkpoint
    found = {"adapter": "lost", "problems": []}
    try:
        loaded = load_adapter(work / "out", bench.manifest)
        files = {p.name: p.read_bytes() for p in (work / "out").iterdir()}
        if files == bench.old_bytes:
            found["adapter"] = "old"
        elif np.array_equal(loaded.flat, bench.ref_flat):
            found["adapter"] = "new"
        else:
            found["problems"].append("OUT loads but is neither the old nor the new adapter")
    except Exception as e:  # noqa: BLE001 - any failure to load is a lost adapter
        found["problems"].append(f"OUT does not load: {type(e).__name__}: {e}")
    try:
        load_checkpoint(work / "ckpt")
    except Exception as e:  # noqa: BLE001
        found["problems"].append(f"checkpoint does not load: {type(e).__name__}: {e}")
    if (work / "cache").exists():  # open a copy, so that the next real run is the one that repairs the cache
        copy = work / "cache-copy"
        shutil.copytree(work / "cache", copy, symlinks=True)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cache = SkipCache(Backbone(bench.bundle), copy)
            stats = cache.stats()
            found["cache_interrupted"] = bool(stats["repaired_rows"] or stats["discarded_bytes"])
            found["problems"] += cache_problems(bench, cache)["problems"]
        except Exception as e:  # noqa: BLE001
            found["problems"].append(f"cache does not open: {type(e).__name__}: {e}")
        shutil.rmtree(copy)
    return found


def cache_problems(bench: Bench, cache) -> dict:
    """Every row a cache keeps must be the backbone's output for its sample, bit for bit (rows it lacks
    are computed now, so they match by construction)."""
    y0, t = cache.gather(cache.rows(bench.x))
    same = np.array_equal(y0, bench.features[0]) and np.array_equal(t, bench.features[1])
    return {"problems": [] if same else ["a cached row differs from the backbone's output"]}


def leftovers(work: Path) -> list[str]:
    """Hidden temp files or folders of interrupted writes still present."""
    return sorted(str(p.relative_to(work)) for p in work.rglob(".*") if ".tmp-" in p.name or p.name.endswith(".old"))


# --- trials --------------------------------------------------------------------------------------------

def run_trials(trials: int, seed: int, root: Path, log=print) -> dict:
    rng = np.random.default_rng(seed)
    bench = Bench(root)
    log(f"set-up: {SAMPLES} samples, MLP {WIDTHS}, {EPOCHS} epochs; uninterrupted run "
        + ", ".join(f"{k} cache {v:.2f} s / {len(bench.events[k])} steps" for k, v in bench.seconds.items()))
    kills, lost, problems, resumed_exact, detected = [], 0, [], 0, collections.Counter()
    old_kept = new_kept = 0
    leftover = []
    targets = collections.deque()
    for i in range(trials):
        cache_start = ("empty", "half", "full")[i % 3]
        if i % STEP_EVERY == 0:  # this trial is first killed at a step of a write phase
            if not targets:
                targets.extend(rng.permutation(WRITE_PHASES).tolist())
            want = targets.popleft()
            if want == "cache" and cache_start == "full":  # a full cache writes nothing
                cache_start = "half"
        work = bench.trial_dir(f"trial-{i:03d}", cache_start)
        cmd = bench.command(work / "out", work / "cache", work / "ckpt")
        trace = work / "trace.txt"
        attempts = 0
        while True:
            trace.write_text("")
            first = attempts == 0
            if first and i % STEP_EVERY == 0:  # kill just before a file-system step of a write phase
                steps = [(n, op) for n, (ph, op) in enumerate(bench.events[cache_start], 1) if ph == want]
                op = rng.choice(sorted({op for _, op in steps}))  # each kind of step equally often
                n = int(rng.choice([n for n, o in steps if o == op]))
                code, out, err = bench.run(cmd, trace, kill_at=n)
                mode, (phase, op) = "step", bench.events[cache_start][n - 1]
            elif first or (attempts < 3 and rng.random() < RE_KILL):  # kill at a random time
                # half over the whole run, half after start-up (Python and imports take half the run)
                low = 0.0 if rng.random() < 0.5 else bench.work_starts[cache_start]
                code, out, err = bench.run(cmd, trace, kill_after=float(rng.uniform(low, bench.seconds[cache_start])))
                mode, (phase, op) = "time", last_phase(trace)
            else:  # let it finish
                code, out, err = bench.run(cmd, trace)
                if code != 0:
                    problems.append(f"trial {i}: the run after the kill(s) failed ({code}): {err.strip()}")
                else:
                    stats = json.loads(out)["cache"]
                    if stats.get("repaired_rows") or stats.get("discarded_bytes"):
                        detected["repaired by the next run"] += 1
                break
            attempts += 1
            if code != -signal.SIGKILL:  # the run finished before the kill fell
                kills.append({"trial": i, "mode": mode, "phase": "finished", "op": "", "rerun": not first})
                if code != 0:
                    problems.append(f"trial {i}: run failed ({code}): {err.strip()}")
                continue
            state = check_after_kill(bench, work)
            kills.append({"trial": i, "mode": mode, "phase": phase, "op": op, "rerun": not first,
                          "adapter": state["adapter"]})
            lost += state["adapter"] == "lost"
            detected["interrupted cache writes"] += state.get("cache_interrupted", False)
            old_kept += state["adapter"] == "old"
            new_kept += state["adapter"] == "new"
            problems += [f"trial {i} ({mode} kill, {phase} {op}): {p}" for p in state["problems"]]
        from edgelora import Backbone, SkipCache, load_adapter
        final = load_adapter(work / "out", bench.manifest)
        if np.array_equal(final.flat, bench.ref_flat):
            resumed_exact += 1
        else:
            problems.append(f"trial {i}: the resumed adapter differs from the uninterrupted run's")
        cache = SkipCache(Backbone(bench.bundle), work / "cache")
        if len(cache) != SAMPLES:
            problems.append(f"trial {i}: the cache holds {len(cache)} rows, expected {SAMPLES}")
        problems += [f"trial {i}: {p}" for p in cache_problems(bench, cache)["problems"]]
        leftover += [f"trial {i}: {p}" for p in leftovers(work)]
        if i % 10 == 9 or i == trials - 1:
            log(f"  {i + 1}/{trials} trials, {len(kills)} kills, {lost} adapters lost, {len(problems)} problems")
        shutil.rmtree(work)
    real = [k for k in kills if k["phase"] != "finished"]
    return {
        "trials": trials, "kills": len(real), "kills_that_missed": len(kills) - len(real),
        "kills_by_phase": dict(collections.Counter(k["phase"] for k in real).most_common()),
        "kills_by_mode": dict(collections.Counter(k["mode"] for k in real)),
        "kills_by_step": dict(collections.Counter(f"{k['phase']}:{k['op']}" for k in real if k["op"]).most_common()),
        "adapters_lost": lost, "old_adapter_after_kill": old_kept, "new_adapter_after_kill": new_kept,
        "resumed_bit_exact": resumed_exact, "kills_that_left_an_interrupted_cache": detected["interrupted cache writes"],
        "caches_repaired_by_next_run": detected["repaired by the next run"],
        "leftover_temp_files": leftover, "problems": problems,
        "seconds_per_uninterrupted_run": bench.seconds,
    }


def last_phase(trace: Path) -> tuple[str, str]:
    """The phase the child was in when it was killed: the last step or phase change it logged."""
    lines = trace.read_text().splitlines()
    if not lines:
        return "startup", ""
    word = lines[-1].split()
    return (word[1], "") if word[0] == "phase" else (word[2], "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m device_bench.crash", description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=TRIALS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgelora-crash-") as tmp:
        start = time.perf_counter()
        result = run_trials(args.trials, args.seed, Path(tmp), log=(lambda s: print(s, file=sys.stderr)))
        result["seconds"] = round(time.perf_counter() - start, 1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result))
    else:
        print(report(result))
    return 0 if result["adapters_lost"] == 0 and not result["problems"] and not result["leftover_temp_files"] else 1


def report(r: dict) -> str:
    lines = [f"crash safety: {r['trials']} trials, {r['kills']} SIGKILLs ({r['kills_that_missed']} more fell after "
             f"the run had finished), {r['seconds']} s",
             "  kills by phase: " + ", ".join(f"{k} {v}" for k, v in r["kills_by_phase"].items()),
             "  kills by mode:  " + ", ".join(f"{k} {v}" for k, v in r["kills_by_mode"].items()),
             "  kills by step:  " + ", ".join(f"{k} {v}" for k, v in r["kills_by_step"].items()),
             f"  adapters lost: {r['adapters_lost']}  (after a kill OUT held the old adapter {r['old_adapter_after_kill']} "
             f"times, the new one {r['new_adapter_after_kill']} times)",
             f"  resumed runs bit-identical to the uninterrupted run: {r['resumed_bit_exact']} of {r['trials']}",
             f"  kills that left an interrupted cache write: {r['kills_that_left_an_interrupted_cache']} (every one "
             f"found and cut when the cache was next opened: {r['caches_repaired_by_next_run']} by the run that "
             f"completed, the others by a rerun that was killed in turn)",
             f"  temp files left after recovery: {len(r['leftover_temp_files'])}",
             f"  problems: {len(r['problems'])}"]
    lines += [f"    {p}" for p in r["problems"][:20]]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
