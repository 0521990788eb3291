"""device_bench.cold_start and device_bench.rss_stages: what they measure is what they say (fast parts only;
`python -m device_bench.cold_start` itself is a long benchmark)."""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import numpy as np

from device_bench.cold_start import install_sizes, process, skip_parameters, wheel_sizes
from edgelora import load_manifest
from edgelora.files.adapter import layout_for


def test_skip_parameters_are_the_adapter_layouts(toy_bundle):
    for r in (1, 4, 5):
        assert skip_parameters(toy_bundle, r) == layout_for(load_manifest(toy_bundle), r, bias=True).size


def test_process_reports_the_childs_own_peak():
    """In a small parent, as the benchmark is (a child's ru_maxrss is never below its parent's peak)."""
    touch = "b = bytearray(80 * 2**20); b[::4096] = b'x' * len(b[::4096])"
    code = ("import json, sys; from device_bench.cold_start import process, own_peak_mb; "
            f"big, small = process([sys.executable, '-c', {touch!r}]), process([sys.executable, '-c', 'pass']); "
            "print(json.dumps([big['peak_rss_mb'], small['peak_rss_mb'], big['seconds'], own_peak_mb()]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    big, small, seconds, parent = json.loads(out.stdout)
    assert big > 80 and small < 40 and parent < 40 and seconds > 0


def test_install_sizes_split_the_runtime_from_the_graphs_extra():
    sizes = install_sizes()
    assert {"numpy", "onnxruntime", "safetensors"} <= set(sizes["runtime"]) and "onnx" not in sizes["runtime"]
    assert "onnx" in sizes["graphs"] and not set(sizes["graphs"]) & set(sizes["runtime"])
    assert sizes["runtime"]["onnxruntime"] > 10 * 2**20


def test_wheel_sizes_count_unpacked_bytes_per_part(tmp_path):
    for name, size in (("numpy-2.0-cp311-cp311-any.whl", 3000), ("onnx-1.0-cp311-cp311-any.whl", 500),
                       ("ml_dtypes-0.1-cp311-cp311-any.whl", 100)):
        with zipfile.ZipFile(tmp_path / name, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("pkg/data.bin", b"\0" * size)
    sizes = wheel_sizes(tmp_path)
    assert sizes["runtime"][0] == {"numpy": 3000} and sizes["graphs"][0] == {"onnx": 500, "ml-dtypes": 100}
    assert 0 < sizes["runtime"][1] < 3000          # the wheel file (3000 zero bytes compress), not the unpacked bytes


def test_rss_stages_follow_one_fine_tune(tmp_path, toy_bundle, toy_data):
    x, y = toy_data
    np.savez(tmp_path / "d.npz", x=x, y=y)
    out = subprocess.run([sys.executable, "-m", "device_bench.rss_stages", str(toy_bundle), str(tmp_path / "d.npz")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout)
    assert [m["stage"] for m in r["stages"]][:3] == ["interpreter", "import numpy", "import onnxruntime"]
    assert r["stages"][-1]["stage"] == "cross-validation and refit" and not {"onnx", "torch"} & set(r["loaded"])
    peaks = [m["VmHWM"] for m in r["stages"]]
    assert peaks == sorted(peaks) and all(m["RssAnon"] + m["RssFile"] <= m["VmRSS"] + 0.2 for m in r["stages"])


def test_startup_parts_account_for_the_whole_process(toy_bundle, toy_data, tmp_path, capsys):
    from device_bench.startup_parts import PARTS, main
    np.savez(tmp_path / "d.npz", x=toy_data[0], y=toy_data[1])
    assert main([str(toy_bundle), str(tmp_path / "d.npz"), "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    ms = {line[:46].strip(): float(line[46:].split()[0]) for line in out.splitlines()[1:-1]}
    assert set(PARTS) <= set(ms) and all(v >= 0 for v in ms.values())
    whole = float(out.splitlines()[-1][46:].split()[0])
    assert 0.8 * whole < sum(ms[p] for p in PARTS) < 1.2 * whole   # the parts are the process
