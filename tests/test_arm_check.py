"""device_bench/arm (the emulated aarch64 check) and device_bench/memory512, without emulating anything.

The emulated run itself takes tens of minutes and needs root; here: the script's syntax and dry run, the
report helpers on made-up inputs, and the 512 MB runner on a toy bundle.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from device_bench import memory512
from device_bench.arm import report

SCRIPT = Path(__file__).resolve().parents[1] / "device_bench" / "arm" / "run.sh"


@pytest.mark.skipif(not shutil.which("sh"), reason="needs a POSIX sh")
def test_script_parses_and_dry_run_names_every_step():
    assert subprocess.run(["sh", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    out = subprocess.run(["sh", str(SCRIPT), "--dry-run", "--", "-m", "not torch", "tests/test_adapter.py"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "QEMU_CPU=cortex-a72" in text and "--arch=arm64" in text
    assert "--only-binary=:all: -e '.[test]'" in text and "torch must not be installed" in text
    # each pytest argument reaches the root's shell quoted: "-m 'not torch'" stays one marker expression
    assert "pytest -q -p no:cacheprovider --junitxml=/tmp/junit.xml '-m' 'not torch' 'tests/test_adapter.py'" in text
    assert "edgelora demo --no-plot --json" in text and "--seed 0" in text


def test_script_rejects_bad_arguments_in_one_line():
    for argv, words in [(["--frobnicate"], "unknown argument '--frobnicate'"),
                        (["--dry-run", "--steps", "suite,bench"], "found 'bench'")]:
        out = subprocess.run(["sh", str(SCRIPT), *argv], capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and words in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" tests="4">
<testcase classname="tests.test_a" name="test_ok" time="0.1"/>
<testcase classname="tests.test_a" name="test_bad" time="0.1"><failure message="assert 1 == 2">x</failure></testcase>
<testcase classname="tests.test_b" name="test_t1" time="0"><skipped message="needs torch" type="pytest.skip"/></testcase>
<testcase classname="tests.test_b" name="test_t2" time="0"><skipped message="needs torch" type="pytest.skip"/></testcase>
</testsuite></testsuites>"""


def test_junit_summary_counts_and_exit_status(tmp_path, capsys):
    (tmp_path / "j.xml").write_text(JUNIT)
    s = report.junit_summary(tmp_path / "j.xml")
    assert (s["ran"], s["passed"], s["skipped"], s["failed"]) == (4, 1, 2, 1)
    assert s["failed_tests"] == ["tests.test_a::test_bad"] and s["skip_reasons"] == {"needs torch": 2}
    assert report.main(["junit", str(tmp_path / "j.xml")]) == 1
    assert "4 tests: 1 passed, 2 skipped, 1 failed" in capsys.readouterr().out
    assert report.main(["junit", str(tmp_path / "none.xml")]) == 2


def _side(folder: Path, shift: float, accuracy: float) -> None:
    (folder / "adapter").mkdir(parents=True)
    a = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    save_file({"A.x": a + np.float32(shift), "B": np.ones((4, 2), np.float32)},
              str(folder / "adapter" / "adapter_model.safetensors"))
    (folder / "eval.json").write_text(json.dumps({"accuracy": accuracy}))


@pytest.mark.parametrize("shift,accuracy,status", [(2e-6, 0.9, 0), (1e-3, 0.9, 1), (0.0, 0.8, 1)])
def test_agree_judges_adapters_within_1e5_and_equal_accuracy(tmp_path, capsys, shift, accuracy, status):
    _side(tmp_path / "x86", 0.0, 0.9)
    _side(tmp_path / "arm", shift, accuracy)
    assert report.main(["agree", str(tmp_path)]) == status
    assert ("PASS" if shift <= 1e-5 else "FAIL") in capsys.readouterr().out


def test_wheel_sizes_of_this_environment():
    rows = {name.lower(): size for name, _, size in report.wheel_sizes(sys.prefix)}
    assert rows["numpy"] > 1e6 and rows["onnxruntime"] > 1e6
    with pytest.raises(FileNotFoundError, match="expected a venv"):
        report.wheel_sizes(Path(sys.prefix) / "no-such-venv")


LINUX = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux")


@LINUX
def test_memory512_runs_edgelora_under_the_limit(toy_bundle, toy_data, tmp_path):
    np.savez(tmp_path / "test.npz", x=toy_data[0], y=toy_data[1])
    ok = memory512.measure("eval", ["eval", str(toy_bundle), "--data", "test.npz", "--json"], 512, tmp_path)
    assert ok["exit_status"] == 0 and json.loads(ok["stdout"])["samples"] == 120, ok
    assert 10 < ok["peak_rss_mb"] < 512 and ok["headroom_mb"] == pytest.approx(512 - ok["peak_rss_mb"], abs=0.2)


@LINUX
def test_memory512_limit_bites_where_it_is_enforced(toy_bundle, tmp_path):
    if not memory512.limit_is_enforced():
        pytest.skip("RLIMIT_AS is not enforced here (qemu-user ignores it), so no limit can bite")
    tight = memory512.measure("eval", ["eval", str(toy_bundle), "--data", "none.npz"], 48, tmp_path)
    assert tight["exit_status"] == 137, tight                # MemoryError: 48 MB cannot even hold onnxruntime
