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

Phases are labelled by a trace hook that only this script installs (crash_setup.install_hook, run by a
`sitecustomize` on the child's PYTHONPATH when EDGELORA_CRASH_TRACE is set): it logs each file-system
step with the phase it belongs to (startup, cache, setup, training, checkpoint, adapter, exit) and, with
EDGELORA_CRASH_AT=N, kills the process with SIGKILL just before step N. edgelora itself has no hook.
"""
from __future__ import annotations

import argparse
import collections
import json
import shutil
import signal
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from .crash_setup import EPOCHS, SAMPLES, WIDTHS, Bench

TRIALS = 60             # at least 50: the crash-safety target
RE_KILL = 0.3           # chance that a rerun is killed again
STEP_EVERY = 2          # every 2nd trial is first killed at a file-system step, the others at a random time
WRITE_PHASES = ("cache", "checkpoint", "adapter")


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
