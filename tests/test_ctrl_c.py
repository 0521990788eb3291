"""Ctrl-C outside a command's work (edgelora/cli/ctrl_c.py): one line and exit code 130, never a traceback."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgelora.cli import ctrl_c
from tests.helpers import default_ctrl_c

REPO = Path(__file__).resolve().parent.parent
MOMENTS = [0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 2.0]   # seconds after edgelora's first line ran
COMMAND = [str(Path(sys.executable).with_name("edgelora"))]
if not Path(COMMAND[0]).exists():
    COMMAND = [sys.executable, "-m", "edgelora.cli"]


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo") / "files"
    subprocess.run([*COMMAND, "demo", "--no-plot", "--save-data", str(folder)], capture_output=True, check=True,
                   cwd=folder.parent, env={**os.environ, "PYTHONPATH": str(REPO)})
    return folder


def ctrl_c_at(delay: float, args: list[str], cwd: Path) -> tuple[int, list[str]]:
    """Start `edgelora ARGS` and send SIGINT `delay` s after its first module has run; its exit code and the
    stderr lines that are not Python's import timings. The moment is found from those timings
    (PYTHONPROFILEIMPORTTIME): a line for any import after edgelora.cli.ctrl_c's comes after its handler is set."""
    proc = subprocess.Popen([*COMMAND, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=cwd,
                            env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1", "PYTHONPATH": str(REPO)},
                            preexec_fn=default_ctrl_c)
    try:
        seen = False
        for line in proc.stderr:
            if seen:
                break
            seen = line.rstrip().endswith("edgelora.cli.ctrl_c")
        assert seen, "the command never imported edgelora.cli.ctrl_c"
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=60)[1]
    finally:
        proc.kill()
    return proc.returncode, [line for line in rest.splitlines() if not line.startswith("import time:")]


@pytest.mark.parametrize("delay", MOMENTS)
def test_ctrl_c_at_any_moment_of_a_command_is_one_line_and_exit_130(demo_files, tmp_path, delay):
    """Ctrl-C while `edgelora` imported its modules, numpy or onnxruntime printed Python's traceback."""
    args = ["finetune", str(demo_files / "bundle"), "--data", str(demo_files / "finetune.npz"), "--out",
            str(tmp_path / "ad"), "--epochs", "3000", "--cv-folds", "0", "--form", "skip",
            "--tap-scaling", "none"]
    code, lines = ctrl_c_at(delay, args, tmp_path)
    assert code == 130 and len(lines) == 1, (code, lines)
    assert lines[0].startswith("edgelora finetune: interrupted by Ctrl-C"), lines
    assert not any(tmp_path.iterdir()), "the interrupted fine-tune wrote something"


def test_importing_the_cli_leaves_another_programs_ctrl_c_alone():
    out = subprocess.run([sys.executable, "-c", "import signal; before = signal.getsignal(signal.SIGINT); "
                          "import edgelora.cli; print(signal.getsignal(signal.SIGINT) is before)"],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
    assert out.stdout.strip() == "True"


def test_a_command_started_with_ctrl_c_ignored_keeps_ignoring_it():
    code = ("import signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); sys.argv = ['edgelora']; "
            "import edgelora.cli; print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
    assert out.stdout.strip() == "True"


def test_ctrl_c_raises_inside_the_work_and_ends_the_process_after_it(monkeypatch):
    before = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(ctrl_c, "is_the_command", lambda: True)
    monkeypatch.setattr(ctrl_c, "_active", [False])
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        ctrl_c.outside_work()
        assert signal.getsignal(signal.SIGINT) is ctrl_c._end_at_once and ctrl_c._said == [ctrl_c.STARTING]
        with ctrl_c.during_work():
            assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.getsignal(signal.SIGINT) is ctrl_c._end_at_once and ctrl_c._said == [ctrl_c.FINISHING]
    finally:
        signal.signal(signal.SIGINT, before)
        ctrl_c._said[0] = ctrl_c.STARTING
