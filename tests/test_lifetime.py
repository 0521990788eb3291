"""The `edgelora` process's start and end (edgelora/cli/lifetime.py): no garbage collection while the modules load,
only in that process; at the quick end, what Python's exit would have done that anyone can see (atexit handlers,
every buffered byte, the exit code) still happens, and a running thread still gets waited for."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from edgelora import load_adapter

REPO = Path(__file__).resolve().parent.parent
COMMAND = [str(Path(sys.executable).with_name("edgelora"))]
if not Path(COMMAND[0]).exists():
    COMMAND = [sys.executable, "-m", "edgelora.cli"]


def python(code: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter whose C stdio buffers a pipe's output (as without PYTHONUNBUFFERED)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**env, "PYTHONPATH": str(REPO)})


def test_end_runs_atexit_flushes_python_and_c_buffers_and_keeps_the_code():
    p = python("import atexit, ctypes, sys\n"
               "from edgelora.cli.lifetime import end\n"
               "atexit.register(lambda: print('atexit ran', file=sys.stderr))\n"
               "ctypes.CDLL(None).printf(b'from C;')\n"          # C's stdout buffer: a pipe, so held until flushed
               "sys.stdout.write('x' * 300000)\n"
               "end(3)\n"
               "print('not reached')")
    assert p.returncode == 3, p.stderr
    assert p.stdout.count("x") == 300000 and "from C;" in p.stdout and "not reached" not in p.stdout
    assert p.stderr.strip() == "atexit ran"


def test_end_leaves_a_running_thread_to_the_ordinary_exit(tmp_path):
    done = tmp_path / "done"
    p = python("import threading, time\n"
               "from edgelora.cli.lifetime import end\n"
               f"threading.Thread(target=lambda: (time.sleep(0.3), open({str(done)!r}, 'w').close())).start()\n"
               "end(0)\n"
               "print('returned')")
    assert p.returncode == 0 and p.stdout.strip() == "returned", p.stderr
    assert done.exists(), "the thread was cut short"


def test_the_command_ends_with_its_output_and_adapter_complete(tmp_path, toy_bundle, toy_data):
    x, y = toy_data
    np.savez(tmp_path / "train.npz", x=x, y=y)
    p = subprocess.run([*COMMAND, "finetune", str(toy_bundle), "--data", str(tmp_path / "train.npz"), "--out",
                        str(tmp_path / "ad"), "--epochs", "2", "--json"], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["adapter"] == str(tmp_path / "ad")
    load_adapter(tmp_path / "ad")
    assert sorted(q.name for q in tmp_path.iterdir()) == ["ad", "bundle", "train.npz"]   # no temp or lock left


def test_error_exit_codes_pass_through(tmp_path, toy_bundle):
    p = subprocess.run([*COMMAND, "finetune", str(toy_bundle), "--data", str(tmp_path / "missing.npz"), "--out",
                        str(tmp_path / "ad")], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 2 and p.stderr.startswith("edgelora finetune: error:"), p.stderr



def test_the_collector_is_off_while_the_modules_load_and_on_for_the_work():
    p = python("import gc, sys\n"
               "sys.argv = ['edgelora', 'finetune', '--help']\n"   # as the `edgelora` process
               "import edgelora.cli as C\n"
               "print('loading', gc.isenabled())\n"
               "started = C.lifetime.started\n"
               "def check():\n"
               "    started()\n"
               "    print('working', gc.isenabled(), gc.get_freeze_count() > 0)\n"
               "C.lifetime.started = check\n"
               "C._run(['finetune', '--help'])")
    lines = p.stdout.splitlines()
    assert "loading False" in lines and "working True True" in lines, p.stdout[-2000:] + p.stderr[-2000:]


def test_a_program_that_imports_the_cli_keeps_its_collector():
    p = python("import gc, edgelora.cli\nprint(gc.isenabled(), gc.get_freeze_count())")
    assert p.stdout.split() == ["True", "0"], p.stderr


def test_a_program_named_edgelora_that_calls_main_goes_on_after_it(tmp_path):
    wrapper = tmp_path / "edgelora"          # a wrapper script, a container's entrypoint: the command's own name
    wrapper.write_text("import gc, sys\nfrom edgelora.cli import main\nrc = main(['--help'])\n"
                       "print('after main', rc, gc.isenabled())\n")
    p = subprocess.run([sys.executable, str(wrapper)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.splitlines()[-1] == "after main 0 True", p.stdout[-500:] + p.stderr

