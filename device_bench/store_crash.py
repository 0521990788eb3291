"""Store-publish crash safety: SIGKILL a personalisation session at random moments; nothing is ever lost.

    python -m device_bench.store_crash                      # 1,000 trials, prints the figures
    python -m device_bench.store_crash --trials 20 --json   # a quick look

Every trial starts from a store whose adapter `user` already serves a version and holds earlier samples,
forks a child that runs one `personalize` session (new samples -> cache -> training -> holdout gate ->
version written -> samples written -> current pointer switched), and kills it with SIGKILL after a random
delay within the time an uninterrupted session takes. (A forked child needs no interpreter start-up, so a
kill falls inside the session itself, not in imports.) After every kill it checks that:
  - the store opens, and every version folder present loads (no half-written version is visible);
  - the current pointer names a version that loads: the one served before, or the one the session published;
  - the samples folder loads (sessions.json and samples.npz agree), and holds the earlier sessions;
then runs the same session to completion and checks that no temp file is left in the store.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from .crash_setup import WIDTHS, make_bundle

TRIALS = 1000
SESSION = 120           # samples per session


def session(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """SESSION labelled samples of blobs around fixed class centres (a new draw per seed)."""
    centres = np.random.default_rng(0).standard_normal((WIDTHS[-1], WIDTHS[0])) * 2
    rng = np.random.default_rng(seed)
    y = rng.integers(0, WIDTHS[-1], SESSION)
    return (centres[y] + rng.standard_normal((SESSION, WIDTHS[0]))).astype(np.float32), y


def config():
    from edgelora.ops.personalize import SESSION_TRAINING, PersonalizeConfig
    return PersonalizeConfig(train=replace(SESSION_TRAINING, epochs=10, batch_size=20), margin=1.0)


def run_session(store_dir: Path, bundle: Path, seed: int) -> str:
    from edgelora import Backbone
    from edgelora.ops.personalize import personalize
    from edgelora.ops.store import AdapterStore
    return personalize(AdapterStore(store_dir), "user", Backbone(bundle), *session(seed), config()).decision


def check(store_dir: Path, bundle: Path, before: int, sessions_before: int) -> tuple[str, list[str]]:
    """('old' | 'new', problems) of the store a kill left."""
    from edgelora import Backbone
    from edgelora.ops.samples import Samples
    from edgelora.ops.store import AdapterStore
    problems, served = [], "lost"
    try:
        store = AdapterStore(store_dir, create=False)
        manifest = Backbone(bundle).manifest
        for v in store.version_numbers("user"):
            store.info("user", v)
            store.load("user", v, manifest)
        cur = store.current("user")
        store.load("user", cur, manifest)
        served = "old" if cur == before else "new" if cur == before + 1 else f"v{cur}"
        data = Samples.load(store.adapter_dir("user", "data"), manifest)
        if len(data.sessions) < sessions_before:
            problems.append(f"the samples hold {len(data.sessions)} sessions, {sessions_before} before the kill")
    except Exception as e:  # noqa: BLE001 - anything that does not load is a loss
        problems.append(f"{type(e).__name__}: {e}")
    return served, problems


def leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*")
                  if ".tmp-" in p.name or ".deleted-" in p.name or p.name.endswith(".old"))


def killed_child(store_dir: Path, bundle: Path, seed: int, delay: float) -> int:
    """Fork a child that runs one session; SIGKILL it after `delay` s. Returns its exit status (-9: killed)."""
    pid = os.fork()
    if pid == 0:  # the child: one session, then leave without running the parent's clean-up
        code = 0
        try:
            run_session(store_dir, bundle, seed)
        except BaseException:  # noqa: BLE001
            code = 1
        os._exit(code)
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.002)
    os.kill(pid, signal.SIGKILL)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def run_trials(trials: int, seed: int, root: Path, log=print) -> dict:
    rng = np.random.default_rng(seed)
    bundle, base = root / "bundle", root / "base"
    make_bundle(bundle)
    for s in (1, 2):  # the starting store: two sessions published
        run_session(base, bundle, s)
    from edgelora.ops.samples import Samples
    from edgelora.ops.store import AdapterStore
    from edgelora import Backbone
    start_store = AdapterStore(base)
    before = start_store.current("user")
    sessions_before = len(Samples.load(start_store.adapter_dir("user", "data"), Backbone(bundle).manifest).sessions)
    t0 = time.perf_counter()
    probe = root / "probe"
    shutil.copytree(base, probe)
    run_session(probe, bundle, 3)
    seconds = time.perf_counter() - t0
    log(f"set-up: sessions of {SESSION} samples, MLP {WIDTHS}; an uninterrupted session takes {seconds:.2f} s")
    served, problems, left, missed = collections.Counter(), [], [], 0
    for i in range(trials):
        work = root / f"trial-{i:04d}"
        shutil.copytree(base, work)
        code = killed_child(work, bundle, 3, float(rng.uniform(0, seconds * 0.9)))
        if code != -signal.SIGKILL:
            missed += 1
        state, found = check(work, bundle, before, sessions_before)
        served[state] += 1
        problems += [f"trial {i}: {p}" for p in found]
        decision = run_session(work, bundle, 3)  # the session again, to completion
        left += [f"trial {i}: {p}" for p in leftovers(work)]
        if decision not in ("published", "kept", "unchanged", "deferred", "rejected"):
            problems.append(f"trial {i}: the completing session ended {decision!r}")
        shutil.rmtree(work)
        if i % 100 == 99 or i == trials - 1:
            log(f"  {i + 1}/{trials} trials, {len(problems)} problems, {len(left)} temp files left")
    return {"trials": trials, "kills": trials - missed, "kills_that_missed": missed,
            "served_after_kill": dict(served), "problems": problems, "leftover_temp_files": left,
            "seconds_per_session": round(seconds, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m device_bench.store_crash", description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=TRIALS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="edgelora-store-crash-") as tmp:
        start = time.perf_counter()
        r = run_trials(args.trials, args.seed, Path(tmp), log=lambda s: print(s, file=sys.stderr))
        r["seconds"] = round(time.perf_counter() - start, 1)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"store publish crash safety: {r['trials']} trials, {r['kills']} SIGKILLs ({r['kills_that_missed']} "
              f"fell after the session had finished), {r['seconds']} s\n"
              f"  after a kill the store served: {r['served_after_kill']}\n"
              f"  problems: {len(r['problems'])}\n  temp files left after the next session: "
              f"{len(r['leftover_temp_files'])}")
        for p in (r["problems"] + r["leftover_temp_files"])[:20]:
            print(f"    {p}")
    return 0 if not r["problems"] and not r["leftover_temp_files"] and r["served_after_kill"].get("lost", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
