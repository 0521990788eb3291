"""Cold start and footprint of a periodic job on a small board: whole processes, with ratios in the same run.

    python -m device_bench.cold_start [--bundle artifacts/bundles/fan_mlp] [--repeats 5] [--out bench_out/cold_start]
                                      [--device-python /tmp/device/bin/python] [--report] [--wheels DIR]

A device that personalises periodically pays a whole process each time. Prints, each block with its load:
- `edgelora --help` as a whole process beside the floor `python -c "import numpy, onnxruntime"`;
- `edgelora finetune` on the demo's data: the whole process against the floor plus its own training time;
- the fan fine-tune as a whole process: `edgelora finetune` as a device runs it, and device_bench's
  Skip2-LoRA worker, against PyTorch FT-All's worker (the workers of `device_bench run`), with peak RSS;
- where the fan fine-tune's peak RSS goes: memory after each stage of one fresh process (rss_stages.py);
- the runtime install: numpy + onnxruntime + safetensors with their dependencies, and the graphs extra (onnx);
- the paper's comparison: Skip2-LoRA against LoRA-All (device_bench's numpy engine) with about the same
  number of trainable parameters, fine-tune time in the process, 3 seeds.
The fan bundle is the reference MLP (`python -m device_bench.reference --out artifacts/bundles`). This process
imports no numpy: each measured command is a process of its own, its wall time taken around it and its peak
RSS its os.wait4 ru_maxrss (Linux never reports that below this process's own peak, printed as its floor).
Timings are medians of --repeats interleaved runs (the fine-tunes' rest also against the floor as the fastest run
of each: other work on the machine lengthens some runs); results.json keeps every run. --device-python runs the
whole processes in a runtime-only install (`python3 -m venv /tmp/device && /tmp/device/bin/pip install .` from
the clone: no onnx, no editable-install finder); --report reprints a finished run; --wheels DIR prints the
unpacked size of another platform's wheels (`pip download --only-binary=:all: --platform ...`).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .launch import spawn
from .profile import device_env

REPO = Path(__file__).resolve().parents[1]
PAPER = {"skip2-lora": 5, "np-lora-all": 4}   # ranks giving 3,568 and 3,596 trainable parameters on the fan MLP
RUNTIME, GRAPHS = ["numpy", "onnxruntime", "safetensors"], ["onnx"]


def edgelora(python: str) -> list[str]:
    """The `edgelora` console script of `python`'s environment (else `python -m edgelora.cli`)."""
    script = Path(python).with_name("edgelora")
    return [str(script)] if script.is_file() else [python, "-m", "edgelora.cli"]


def process(argv: list[str], cwd: Path | None = None, env: dict | None = None) -> dict:
    """argv as a whole process (device profile: one thread, plus `env`): wall seconds, peak RSS (MB), stdout."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        p = subprocess.Popen(argv, cwd=cwd, env={**device_env(), **(env or {})}, stdout=out, stderr=err)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, argv))} failed (exit {p.returncode}): {err.read()[-2000:]}")
        return {"seconds": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "stdout": out.read()}


def interleaved(commands: dict[str, tuple[list[str], Path | None]], repeats: int) -> dict[str, list[dict]]:
    """Every command once per round, `repeats` rounds, so that each sees the same machine conditions."""
    runs = {name: [] for name in commands}
    for _ in range(repeats):
        for name, (argv, cwd) in commands.items():
            runs[name].append(process(argv, cwd))
    return runs


def median(runs: list[dict], key: str = "seconds") -> float:
    return sorted(r[key] for r in runs)[(len(runs) - 1) // 2]  # the lower median: a run that happened


def own_peak_mb() -> float:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(status["VmHWM"].split()[0]) / 1024


def load() -> str:
    return "load %.2f %.2f %.2f" % os.getloadavg()


def prepare(out: Path, bundle: Path) -> dict:
    """Data, in child processes of this interpreter (this one stays small): the demo's files, the fan protocol's
    fine-tune set (x, y) for the CLI and its task file (x_ft, y_ft, x_te, y_te) for the workers."""
    demo = out / "demo"
    if not (demo / "finetune.npz").is_file():
        process(edgelora(sys.executable) + ["demo", "--no-plot", "--quiet", "--save-data", str(demo)], cwd=out)
    code = ("import sys, numpy as np; from device_bench.protocols import fan; "
            "from device_bench.tasks import write_task;"
            "d = fan(); np.savez(sys.argv[1], x=d['finetune'][0], y=d['finetune'][1]);"
            "write_task(__import__('pathlib').Path(sys.argv[2]), d['finetune'], d['test'])")
    fan_cli, fan_task = out / "fan_finetune.npz", out / "fan_task.npz"
    if not fan_task.is_file():
        subprocess.run([sys.executable, "-c", code, str(fan_cli), str(fan_task)], cwd=REPO, check=True,
                       env={**device_env(), "PYTHONPATH": str(REPO)})
    return {"demo": demo, "fan_cli": fan_cli, "task": {"name": "fan", "bundle": str(bundle), "data": str(fan_task)}}


def finetune_argv(python: str, bundle: Path, data: Path, out: Path) -> list[str]:
    return edgelora(python) + ["finetune", str(bundle), "--data", str(data), "--out", str(out), "--overwrite", "--json"]


def cold(files: dict, bundle: Path, out: Path, repeats: int, python: str) -> dict:
    """--help, the floor, the demo fine-tune and the fan fine-tune, interleaved, after one round that writes
    their bytecode."""
    demo = files["demo"]
    commands = {"floor": ([python, "-c", "import numpy, onnxruntime"], None),
                "help": (edgelora(python) + ["--help"], None),
                "demo_finetune": (finetune_argv(python, demo / "bundle", demo / "finetune.npz", out / "ad_demo"), None),
                "fan_finetune": (finetune_argv(python, bundle, files["fan_cli"], out / "ad_fan"), None)}
    interleaved(commands, 1)
    runs = interleaved(commands, repeats)
    for name in ("demo_finetune", "fan_finetune"):
        for r in runs[name]:
            r["train_seconds"] = json.loads(r.pop("stdout"))["seconds"]["train"]
    for r in runs["floor"] + runs["help"]:
        r.pop("stdout")
    return runs


def workers(task: dict, out: Path, repeats: int, seeds: list[int]) -> dict:
    """device_bench's workers (one process each): Skip2-LoRA as shipped, PyTorch FT-All, and the paper's pair."""
    base = {"epochs": 30, "batch_size": 20}
    found = {"skip2-lora": [], "torch-ft-all": []}
    for _ in range(repeats):
        for method in found:
            found[method].append(spawn({"method": method, "seeds": [0], "tasks": [task], "config": base,
                                        "profile": False}, out / "specs"))
    paper = {}
    for method, r in PAPER.items():
        cfg = {**base, "rank": r, "alpha": 2.0 * r, "skip_policy": "fixed"}
        paper[method] = spawn({"method": method, "seeds": seeds, "tasks": [task], "config": cfg, "profile": False},
                              out / "specs")
    return {"whole": found, "paper": paper}


def install_sizes() -> dict:
    """Installed bytes of each distribution in the closure of the runtime and of the graphs extra."""
    from importlib import metadata
    def closure(names: list[str]) -> set[str]:
        seen, todo = set(), list(names)
        while todo:
            name = todo.pop().lower().replace("_", "-")
            if name in seen:
                continue
            seen.add(name)
            for req in metadata.requires(name) or []:
                if "extra ==" not in req:
                    todo.append(req.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0]
                                .split("!")[0].split("~")[0].strip())
        return seen

    def size(name: str) -> int:
        dist = metadata.distribution(name)
        return sum(os.path.getsize(p) for f in dist.files or [] if os.path.isfile(p := dist.locate_file(f)))
    runtime = closure(RUNTIME)
    graphs = closure(GRAPHS) - runtime
    return {"runtime": {n: size(n) for n in sorted(runtime)}, "graphs": {n: size(n) for n in sorted(graphs)}}


def wheel_sizes(folder: Path) -> dict:
    """{part: ({name: unpacked bytes}, bytes of the wheel files)} of the wheels in `folder` (e.g. aarch64 wheels
    from `pip download --platform ...`), split as install_sizes splits them: what pip installs, without the
    bytecode it compiles at install time."""
    import zipfile
    sizes, download = {}, {}
    for wheel in sorted(folder.glob("*.whl")):
        name = wheel.name.split("-")[0].lower().replace("_", "-")
        with zipfile.ZipFile(wheel) as z:
            sizes[name], download[name] = sum(i.file_size for i in z.infolist()), wheel.stat().st_size
    graphs = {"onnx", "ml-dtypes", "typing-extensions"}
    return {part: ({n: b for n, b in sizes.items() if (n in graphs) == (part == "graphs")},
                   sum(b for n, b in download.items() if (n in graphs) == (part == "graphs")))
            for part in ("runtime", "graphs")}


def skip_parameters(bundle: Path, r: int) -> int:
    """Trainable parameters of a rank-r Skip-LoRA adapter with an output bias: A_k (d_k, r), B_k (r, C), b (C)."""
    m = json.loads((bundle / "edgelora_bundle.json").read_text())
    c, widths = m["output"]["width"], [t["width"] for t in m["taps"]]
    return r * sum(widths) + len(widths) * r * c + c


def summary(results: dict, bundle: Path) -> list[str]:
    """The report's lines from results.json's content."""
    import statistics
    c, w, mb = results["cold"], results["workers"], 2 ** 20

    def row(label: str, seconds: float, rss: float, note: str = "") -> str:
        return f"  {label:44s} {seconds:6.3f} s  {rss:5.1f} MB" + (f"  ({note})" if note else "")
    floor, help_ = median(c["floor"]), median(c["help"])
    lines = [f"cold start ({results['load_cold']}; median of {len(c['floor'])} interleaved runs; this process's own "
             f"peak {results['own_peak_mb']:.1f} MB bounds the RSS figures from below)",
             row("floor: python -c 'import numpy, onnxruntime'", floor, median(c["floor"], "peak_rss_mb")),
             row("edgelora --help", help_, median(c["help"], "peak_rss_mb"),
                 f"{help_ / floor:.2f}x the floor; target <= 0.25 s")]
    for name, what in (("demo_finetune", "demo"), ("fan_finetune", "fan")):
        runs = c[name]
        rest = statistics.median(r["seconds"] - r["train_seconds"] for r in runs)
        least = min(r["seconds"] - r["train_seconds"] for r in runs) / min(r["seconds"] for r in c["floor"])
        lines.append(row(f"edgelora finetune ({what})", median(runs), median(runs, "peak_rss_mb"),
                         f"training {median(runs, 'train_seconds'):.3f} s; the rest {rest:.3f} s = "
                         f"{rest / floor:.2f}x the floor; target <= 1.5x; fastest runs {least:.2f}x"))
    skip, torch = w["whole"]["skip2-lora"], w["whole"]["torch-ft-all"]
    pt = statistics.median(r["process_seconds"] for r in torch)
    lines += [f"fan fine-tune as a whole process ({results['load_workers']}; median of {len(torch)} worker runs)",
              row("PyTorch FT-All worker", pt, statistics.median(r["peak_rss_mb"] for r in torch))]
    whole, peak = (statistics.median(r[k] for r in skip) for k in ("process_seconds", "peak_rss_mb"))
    for label, sec, rss in (("Skip2-LoRA worker (edgelora's defaults)", whole, peak),
                            ("edgelora finetune (the CLI, above)", median(c["fan_finetune"]),
                             median(c["fan_finetune"], "peak_rss_mb"))):
        lines.append(row(label, sec, rss, f"{sec / pt:.3f}x PyTorch's whole process; targets <= 0.12x, <= 70 MB"))
    lines.append(f"where the fan fine-tune's memory goes, MB (one fresh process; also loaded: "
                 f"{results['stages']['loaded']})")
    prev = {"VmRSS": 0.0, "RssAnon": 0.0, "RssFile": 0.0}
    for m in results["stages"]["stages"]:
        lines.append(f"  {m['stage']:27s} " + "  ".join(f"{k} {m[k]:5.1f} (+{m[k] - prev[k]:4.1f})" for k in prev)
                     + f"  peak {m['VmHWM']:5.1f}")
        prev = {k: m[k] for k in prev}
    for part, names in (("runtime", RUNTIME), ("graphs extra", GRAPHS)):
        sizes = results["install"][part.split()[0]]
        lines.append(f"install, {part} ({' + '.join(names)} and their dependencies): "
                     f"{sum(sizes.values()) / mb:.1f} MB: " + ", ".join(f"{n} {s / mb:.1f}" for n, s in sizes.items()))
    p = w["paper"]
    sec = {m: statistics.mean(r["seconds"] for r in p[m]["runs"]) for m in p}
    acc = {m: statistics.mean(r["accuracy"] for r in p[m]["runs"]) for m in p}
    params = {"skip2-lora": skip_parameters(bundle, PAPER["skip2-lora"]),
              "np-lora-all": p["np-lora-all"]["runs"][0].get("trainable_params")}
    lines.append(f"the paper's comparison (fan, fixed recipe, 30 epochs, batch 20, mean of "
                 f"{len(p['skip2-lora']['runs'])} seeds, fine-tune time in the process)")
    for m in p:
        lines.append(f"  {m:12s} r={PAPER[m]}  {params[m]} parameters  {sec[m]:7.4f} s  accuracy {100 * acc[m]:5.1f} %")
    lines.append(f"  Skip2-LoRA: {100 * (1 - sec['skip2-lora'] / sec['np-lora-all']):.1f} % less fine-tune time than "
                 f"LoRA-All (the paper: 90 % on average)")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, default=REPO / "artifacts" / "bundles" / "fan_mlp", help="the fan bundle")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved runs of each whole process (default 5)")
    ap.add_argument("--out", type=Path, default=REPO / "bench_out" / "cold_start", help="data, adapters, results")
    ap.add_argument("--wheels", type=Path, default=None, metavar="DIR",
                    help="only print the unpacked size of the wheels in DIR (another platform's, from pip download)")
    ap.add_argument("--device-python", default=sys.executable, metavar="PYTHON",
                    help="the interpreter of the device's install for the whole processes, e.g. a venv with only "
                         "`pip install .` from the clone (default this one; the workers always run in this one)")
    ap.add_argument("--report", action="store_true", help="only print the report of --out's results.json")
    a = ap.parse_args(argv)
    if a.report:
        print("\n".join(summary(json.loads((a.out / "results.json").read_text()), a.bundle.resolve())))
        return 0
    if a.wheels is not None:
        sizes = wheel_sizes(a.wheels)
        for part, (found, download) in sizes.items():
            print(f"{part}: {sum(found.values()) / 2**20:.1f} MB unpacked ({download / 2**20:.1f} MB of wheels): "
                  + ", ".join(f"{n} {b / 2**20:.1f}" for n, b in found.items()))
        return 0 if sizes["runtime"][0] else 1
    if not (a.bundle / "edgelora_bundle.json").is_file():
        ap.error(f"--bundle: expected a bundle folder with edgelora_bundle.json, found none at {a.bundle} "
                 "(build it with: python -m device_bench.reference --out artifacts/bundles --protocols fan)")
    if a.repeats < 1:
        ap.error(f"--repeats: expected a positive integer, found {a.repeats}")
    out, bundle = a.out.resolve(), a.bundle.resolve()
    out.mkdir(parents=True, exist_ok=True)
    # measured processes run from bytecode, as a pip-installed edgelora does (pip compiles it at install time);
    # the bytecode goes under --out, never beside the sources
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(out / "pycache")
    python = a.device_python
    files = prepare(out, bundle)
    results = {"python": sys.version.split()[0], "device_python": python, "load_cold": load()}
    stages = [python, "-m", "device_bench.rss_stages", str(bundle), str(files["fan_cli"])]
    steps = [("cold", lambda: cold(files, bundle, out, a.repeats, python)), ("own_peak_mb", own_peak_mb),
             ("stages", lambda: json.loads(process(stages, cwd=REPO, env={"PYTHONPATH": str(REPO)})["stdout"])),
             ("install", install_sizes), ("load_workers", load),
             ("workers", lambda: workers(files["task"], out, max(1, a.repeats // 2), [0, 1, 2])), ("load_end", load)]
    for key, step in steps:  # results.json after every step: a failure late in the run keeps what was measured
        results[key] = step()
        (out / "results.json").write_text(json.dumps(results, indent=1, sort_keys=True))
    print("\n".join(summary(results, bundle) + [f"({results['load_end']} at the end; results in {out}/results.json)"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
