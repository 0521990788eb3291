"""One writer per output (edgelora/files/output_lock.py) and the removal of what killed writers left behind."""
import os
import subprocess
import sys
import time

import pytest

from edgelora.files import fileio
from edgelora.files.output_lock import OutputBusyError, OutputLock, lock_path
from tests.test_cli import FAST, files, run  # noqa: F401 - fixture


@pytest.mark.parametrize("flag", ["--out", "--checkpoint-dir", "--cache-dir"])
def test_error_a_second_run_into_the_same_output_is_refused_with_one_line(files, capsys, flag):
    """Two finetune runs into one --out both exited 0 and printed "saved"; into one --checkpoint-dir the
    checkpoint was corrupt in 2 of 20 races. Now the second run is refused before any work."""
    tmp, bundle = files
    paths = {"--out": tmp / "ad", "--checkpoint-dir": tmp / "ckpt", "--cache-dir": tmp / "cache"}
    args = ["finetune", bundle, "--data", tmp / "train.npz", *FAST] + [a for f, p in paths.items() for a in (f, p)]
    with OutputLock(paths[flag], flag):                   # the first run, still writing
        code, out, err = run(capsys, *args)
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and f"{flag} {paths[flag]} is being written by another run (pid " \
        f"{os.getpid()}" in err and "nothing was written" in err
    assert not paths["--out"].exists()
    code, out, err = run(capsys, *args)                    # once the first has finished
    assert code == 0, err
    assert not any(lock_path(p).exists() for p in paths.values())


def test_a_lock_its_holder_removed_while_another_waited_is_not_taken(tmp_path):
    first = OutputLock(tmp_path / "out", "--out").acquire()
    with pytest.raises(OutputBusyError, match="--out .*out is being written by another run"):
        OutputLock(tmp_path / "out", "--out").acquire()
    first.release()
    with OutputLock(tmp_path / "out", "--out"):
        assert lock_path(tmp_path / "out").read_text().startswith(f"pid {os.getpid()}")


def test_a_run_removes_the_temps_killed_writers_of_its_outputs_left(files, capsys):
    """After SIGKILL and a successful re-run, 3 .ckpt.tmp-* and 5 .data.tmp-* / .current.json.tmp-* remained."""
    tmp, bundle = files
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    dead = [tmp / f".ad.tmp-{ended.pid}-0123abcd", tmp / f".ckpt.tmp-{ended.pid}-89abcdef"]
    for d in dead:
        d.mkdir()
    live = tmp / f".ad.tmp-{os.getppid()}-00000000"      # a live writer (our parent) is left alone
    live.mkdir()
    code, _, err = run(capsys, "finetune", bundle, "--data", tmp / "train.npz", *FAST, "--out", tmp / "ad",
                       "--checkpoint-dir", tmp / "ckpt")
    assert code == 0, err
    assert not any(d.exists() for d in dead) and live.exists()


def test_a_temp_whose_pid_was_reused_by_a_later_process_is_stale(tmp_path):
    later = tmp_path / "made-before"
    later.mkdir()
    time.sleep(2.5)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.2)
        assert fileio._started_after(proc.pid, later)
        assert not fileio._started_after(os.getppid(), later)
    finally:
        proc.kill()
        proc.wait()
