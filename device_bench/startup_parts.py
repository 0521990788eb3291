"""What a fine-tune process pays besides its training: `edgelora finetune` split into its parts, beside the floor.

    python -m device_bench.startup_parts BUNDLE DATA.npz [--repeats 5] [--python /tmp/device/bin/python ...]

Runs, interleaved, `python -c "import numpy, onnxruntime"` (the floor) and `edgelora finetune BUNDLE --data DATA`
in a fresh process that stamps the time of each part (its functions wrapped from outside: nothing in edgelora
changes): the interpreter's start, numpy and onnxruntime, edgelora's modules, building the parser, opening the
backbone, reading the data, the split, the cache fill, the training (`seconds.train`), the adapter's save, the
rest of the command (report, output), and the process's exit. Prints the medians in ms and the rest against
the floor (the target of docs/footprint.md: whole process <= 1.5x the floor plus the training time), in wall
time and in CPU time (the process's user + system time less the training's, which moves less with the load).
With --python given more than once (installs before and after a change), each install's fine-tune runs in
every round. The cold_start data (`python -m device_bench.cold_start`) has the demo's files in
bench_out/cold_start/demo.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .profile import device_env

PARTS = ("interpreter", "numpy+onnxruntime", "edgelora modules", "parser", "open backbone", "read data", "split",
         "cache fill", "training", "save adapter", "other in the command", "exit")
FLOOR = "floor: python -c 'import numpy, onnxruntime'"
CHILD = r"""
import sys, time
wall0 = time.time(); t0 = time.perf_counter()
import gc, importlib.util, json, os
# an edgelora with cli/lifetime.py starts as the `edgelora` process does: no garbage collection until main() has
# its command's module (lifetime.start, then .started in main)
NEW = os.path.exists(os.path.join(importlib.util.find_spec("edgelora").submodule_search_locations[0], "cli",
                                  "lifetime.py"))
if NEW:
    gc.disable()
import numpy, onnxruntime
t1 = time.perf_counter()
import edgelora.cli as C, edgelora.cli.common as common, edgelora.cli.finetune as F
import edgelora.files.adapter as A, edgelora.runtime.train as T
t2 = time.perf_counter()
if NEW:
    gc.enable()
    C.lifetime.start()
spent = {}
def timed(owner, name, part):
    f = getattr(owner, name)
    def g(*a, **k):
        s = time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            spent[part] = spent.get(part, 0.0) + time.perf_counter() - s
    setattr(owner, name, g)
train_cpu, trainer = [0.0], T._train_numpy
def cpu_timed(*a, **k):   # the training's CPU time (cross-validation, the refit): thread_time, this thread
    s = time.thread_time()
    try:
        return trainer(*a, **k)
    finally:
        train_cpu[0] += time.thread_time() - s
T._train_numpy = cpu_timed
for owner, name, part in ((C, "build_parser", "parser"), (common, "open_backbone", "open backbone"),
                          (common, "load_data", "read data"), (F, "training_split", "split"),
                          (F, "_fill", "cache fill"), (A.Adapter, "save", "save adapter")):
    timed(owner, name, part)
out = open(sys.argv[1], "w")
sys.stdout, real = out, sys.stdout
t3 = time.perf_counter()
code = C.main(sys.argv[2:])
t4 = time.perf_counter()
sys.stdout = real
out.close()
train = json.load(open(sys.argv[1]))["seconds"]["train"]
spent.update({"numpy+onnxruntime": t1 - t0, "edgelora modules": t2 - t1, "training": train})
spent["other in the command"] = (t4 - t3) - sum(v for k, v in spent.items() if k not in ("numpy+onnxruntime",
                                                                                         "edgelora modules"))
import atexit
atexit.register(lambda: print(json.dumps({"parts": spent, "wall0": wall0, "end": time.time(),
                                          "train_cpu": train_cpu[0]}), file=sys.stderr))
(C.lifetime.end if NEW else sys.exit)(code)   # as the `edgelora` process ends (main() ends only that one)
"""


def run_once(python: str, bundle: Path, data: Path, out: Path) -> dict:
    """One fine-tune process: its parts (seconds), its wall time, the interpreter's start and its exit."""
    report = out / "report.json"
    argv = [python, "-c", CHILD, str(report), "finetune", str(bundle), "--data", str(data), "--out", str(out / "ad"),
            "--overwrite", "--json", "--quiet"]
    start = time.time()
    code, err, cpu = process(argv, out)
    end = time.time()
    if code != 0:
        raise RuntimeError(f"the fine-tune failed (exit {code}): {err[-2000:]}")
    found = json.loads(err.strip().splitlines()[-1])
    return {**found["parts"], "interpreter": found["wall0"] - start, "exit": end - found["end"], "wall": end - start,
            "cpu": cpu, "rest_cpu": cpu - found["train_cpu"]}


def floor_once(python: str) -> dict:
    """The floor `import numpy, onnxruntime` as a whole process, and its own interpreter start, imports and exit."""
    code = ("import atexit, sys, time; w = time.time(); import numpy, onnxruntime; i = time.time() - w; "
            "atexit.register(lambda: print(w, i, time.time(), file=sys.stderr))")
    start = time.time()
    status, err, cpu = process([python, "-c", code], None)
    end = time.time()
    if status != 0:
        raise RuntimeError(f"the floor failed (exit {status}): {err[-2000:]}")
    w, imports, done = (float(v) for v in err.split()[-3:])
    return {"wall": end - start, "interpreter": w - start, "numpy+onnxruntime": imports, "exit": end - done, "cpu": cpu}


def process(argv: list[str], cwd: Path | None) -> tuple[int, str, float]:
    """argv as a process (device profile): its exit code, its stderr and its CPU time (user + system, s)."""
    with tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, text=True, env=device_env(), cwd=cwd)
        _, status, usage = os.wait4(p.pid, 0)
        err.seek(0)
        return os.waitstatus_to_exitcode(status), err.read(), usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("--repeats", type=int, default=5, help="interleaved runs of each (default 5)")
    ap.add_argument("--python", action="append", default=None, metavar="PYTHON",
                    help="the device install's interpreter (default this one); given twice or more, each install's "
                         "fine-tune runs in every round (e.g. before and after a change), the floor with the first")
    a = ap.parse_args(argv)
    if a.repeats < 1:
        ap.error(f"--repeats: expected a positive integer, found {a.repeats}")
    pythons = a.python or [sys.executable]
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)   # as installed: from bytecode (pip compiles it)
    load = "load %.2f %.2f %.2f" % os.getloadavg()
    bundle, data = a.bundle.resolve(), a.data.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
        for python in pythons:   # one round that writes the bytecode
            run_once(python, bundle, data, Path(tmp))
        floor_once(pythons[0])
        runs, floors = {python: [] for python in pythons}, []
        for _ in range(a.repeats):
            floors.append(floor_once(pythons[0]))
            for python in pythons:
                runs[python].append(run_once(python, bundle, data, Path(tmp)))
    floor, floor_cpu = (statistics.median(f[k] for f in floors) for k in ("wall", "cpu"))
    print(f"edgelora finetune {a.bundle.name}: medians of {a.repeats} interleaved runs ({load}; "
          "load %.2f %.2f %.2f at the end)" % os.getloadavg())
    print(f"  {FLOOR:44s} {1000 * floor:7.1f} ms (" + ", ".join(
        f"{k} {1000 * statistics.median(f[k] for f in floors):.1f}" for k in ("interpreter", "numpy+onnxruntime",
                                                                              "exit")) + ")")
    for python in pythons:
        if len(pythons) > 1:
            print(f"{python}:")
        for part in PARTS:
            print(f"  {part:44s} {1000 * statistics.median(r[part] for r in runs[python]):7.1f} ms")
        rest_cpu = statistics.median(r["rest_cpu"] for r in runs[python])
        print(f"  {'CPU time less the training':44s} {1000 * rest_cpu:7.1f} ms = {rest_cpu / floor_cpu:.2f}x the "
              f"floor's CPU time ({1000 * floor_cpu:.1f} ms; CPU times move less with the load)")
        rest = statistics.median(r["wall"] - r["training"] for r in runs[python])
        print(f"  {'whole process':44s} {1000 * statistics.median(r['wall'] for r in runs[python]):7.1f} ms; less "
              f"the training {1000 * rest:.1f} ms = {rest / floor:.2f}x the floor (target <= 1.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
