"""Each `edgelora` command imports only what it uses, and the device commands run without the onnx package.
Every case is a fresh interpreter (a subprocess) whose sys.modules is read after the command ran."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

HEAVY = ("onnx", "ml_dtypes", "matplotlib", "flwr", "torch")   # none of these on the device's path
# Runs main(argv) for each argv in turn; prints each exit code, the stderr lines, and the HEAVY modules loaded.
# BLOCK: modules made unimportable first, as if not installed.
RUNNER = """
import contextlib, io, json, sys
for name in BLOCK:
    sys.modules[name] = None   # `import name` now raises ModuleNotFoundError, as when it is not installed
from edgelora.cli import main
codes, errors = [], []
for argv in COMMANDS:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        codes.append(main(argv))
    errors.append(err.getvalue().splitlines())
loaded = sorted(m for m in HEAVY if sys.modules.get(m) is not None)
print(json.dumps({"codes": codes, "errors": errors, "loaded": loaded}))
"""


def run(commands: list[list[str]], block: tuple[str, ...] = ()) -> dict:
    code = f"BLOCK, HEAVY, COMMANDS = {block!r}, {HEAVY!r}, {commands!r}\n" + RUNNER
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def device(tmp_path, toy_bundle, toy_data):
    """The toy bundle, its data, an adapter and a store holding one personalised adapter."""
    x, y = toy_data
    np.savez(tmp_path / "train.npz", x=x, y=y)
    d, b = str(tmp_path), str(toy_bundle)
    ready = run([["finetune", b, "--data", f"{d}/train.npz", "--out", f"{d}/ad", "--epochs", "2"],
                 ["personalize", f"{d}/store", "user", "--bundle", b, "--data", f"{d}/train.npz"]])
    assert ready["codes"] == [0, 0], ready["errors"]
    return d, b


def device_commands(d: str, b: str) -> dict[str, list[str]]:
    data = f"{d}/train.npz"
    return {"--help": ["--help"],
            "finetune": ["finetune", b, "--data", data, "--out", f"{d}/ad2", "--epochs", "2"],
            "eval": ["eval", b, "--adapter", f"{d}/ad", "--data", data],
            "predict": ["predict", b, "--adapter", f"{d}/ad", "--data", data, "--out", f"{d}/labels.npy"],
            "store": ["store", "list", f"{d}/store"],
            "personalize": ["personalize", f"{d}/store", "user", "--bundle", b, "--data", data]}


def test_device_commands_import_no_graph_plot_fleet_or_torch_package(device):
    for name, argv in device_commands(*device).items():
        r = run([argv])
        assert r["codes"] == [0], (name, r["errors"])
        assert r["loaded"] == [], f"`edgelora {name}` imported {r['loaded']}"


def test_graph_commands_import_onnx(device):
    d, b = device
    r = run([["kit", b, "--out", f"{d}/kit"]])
    assert r["codes"] == [0] and "onnx" in r["loaded"]


def test_device_commands_work_without_onnx(device):
    commands = device_commands(*device)
    r = run(list(commands.values()), block=("onnx",))
    assert r["codes"] == [0] * len(commands), dict(zip(commands, r["errors"]))


def test_error_graph_commands_without_onnx_say_which_extra_in_one_line(device):
    d, b = device
    r = run([["kit", b, "--out", f"{d}/kit"], ["merge", b, f"{d}/ad", "--out", f"{d}/m.onnx"],
             ["export", f"{b}/backbone.onnx", "--out", f"{d}/b2"],
             ["finetune", b, "--data", f"{d}/train.npz", "--out", f"{d}/ad3", "--engine", "onnx"]], block=("onnx",))
    assert r["codes"] == [1, 1, 1, 1], r["errors"]
    for lines in r["errors"]:
        assert len(lines) == 1 and "pip install -e '.[graphs]'" in lines[0], lines
    assert r["errors"][0][0].startswith("edgelora kit: error: ")
