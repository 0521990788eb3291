"""The device profile: one thread everywhere, optional address-space cap, and how memory is measured.

Every benchmark process runs with these settings so that numbers mean the same thing on a laptop and on a
Raspberry Pi: BLAS/OpenMP pools pinned to one thread (env vars, set before numpy is imported),
onnxruntime intra-op 1 (edgelora.Backbone's default), torch.set_num_threads(1) in torch processes.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

THREADS_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "VECLIB_MAXIMUM_THREADS": "1", "NUMEXPR_NUM_THREADS": "1"}


def device_env(base: dict | None = None) -> dict:
    """The environment of a benchmark worker: `base` (default os.environ) with every thread pool at 1."""
    env = dict(os.environ if base is None else base)
    env.update(THREADS_ENV)
    env["PYTHONHASHSEED"] = "0"
    return env


def check_threads() -> None:
    """Refuse to measure when a thread pool is not pinned to one (results would not be comparable)."""
    wrong = {k: os.environ.get(k) for k in THREADS_ENV if os.environ.get(k) != "1"}
    if wrong:
        raise RuntimeError(f"device profile: expected {sorted(THREADS_ENV)} = 1 in the environment before "
                           f"numpy is imported, found {wrong}; run workers through device_bench.run")


def worker_spec(argv: list[str], module: str) -> dict | None:
    """The SPEC.json a worker process (`python -m device_bench.<module> SPEC.json`) was given, its threads checked;
    None after printing the usage when it was not given one."""
    if len(argv) != 1:
        print(f"usage: python -m device_bench.{module} SPEC.json", file=sys.stderr)
        return None
    check_threads()
    return json.loads(Path(argv[0]).read_text())


def torch_one_thread() -> None:
    """torch's intra- and inter-op pools at one thread (a torch worker, after importing torch)."""
    import torch
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)


def cap_address_space(megabytes: int | None) -> None:
    """Optional RLIMIT_AS cap (a small device's RAM). Note: onnxruntime and torch reserve far more virtual
    address space than they touch, so a cap near the RSS fails at import; use it as an upper bound test."""
    if megabytes is None:
        return
    if megabytes <= 0:
        raise ValueError(f"address-space cap should be a positive number of MB, found {megabytes}")
    limit = int(megabytes) * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _status_kb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def rss_mb() -> float:
    """Current resident set size in MB (VmRSS)."""
    kb = _status_kb("VmRSS")
    return kb / 1024 if kb is not None else peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident set size of this process image in MB.

    Linux: VmHWM of /proc/self/status, which belongs to the process image after exec. getrusage's
    ru_maxrss is not used there because Linux carries the parent's high-water mark across fork+exec, so
    a worker started by a large parent would report the parent's size.
    """
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / 1024 if sys.platform == "darwin" else peak / 1024  # macOS reports bytes


class Clock:
    """Named accumulated wall-time sections: `t = clock.tick(); ...; clock.add("forward", t)`."""

    def __init__(self):
        self.sections: dict[str, float] = {}

    @staticmethod
    def tick() -> float:
        return time.perf_counter()

    def add(self, name: str, since: float) -> float:
        """Add the time since `since` to section `name`; return now (the next section's start)."""
        now = time.perf_counter()
        self.sections[name] = self.sections.get(name, 0.0) + now - since
        return now
