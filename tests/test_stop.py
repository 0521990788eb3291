"""Stopping the backbone (edgelora/runtime/stop.py): a time limit per run, and Ctrl-C/SIGTERM within a second
even while onnxruntime runs a model that never ends."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgelora import Backbone
from edgelora.files.bundle import write_bundle
from tests.helpers import default_ctrl_c, mlp_bundle, random_mlp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def endless_bundle(tmp_path):
    """A bundle whose graph runs a Loop of 2^62 iterations before its outputs."""
    template = mlp_bundle(tmp_path / "plain", random_mlp([2, 2]))
    body = helper.make_graph(
        [helper.make_node("Identity", ["c"], ["c_out"]), helper.make_node("Identity", ["v"], ["v_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("c", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, ["N", 2])])
    nodes = [helper.make_node("Constant", [], ["M"], value=helper.make_tensor("M", TensorProto.INT64, [], [2**62])),
             helper.make_node("Constant", [], ["T"], value=helper.make_tensor("T", TensorProto.BOOL, [], [True])),
             helper.make_node("Loop", ["M", "T", "x"], ["looped"], body=body),
             helper.make_node("Identity", ["looped"], ["logits"]), helper.make_node("Identity", ["looped"], ["tap0"])]
    graph = helper.make_graph(nodes, "endless", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 2]) for n in ("logits", "tap0")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    write_bundle(tmp_path / "endless", model.SerializeToString(), template)
    return tmp_path / "endless"


def pipes(pid: int) -> int:
    """Pipes the process holds open; an fd closed between listing and reading it is not counted (a race)."""
    fds, n = f"/proc/{pid}/fd", 0
    for fd in os.listdir(fds):
        try:
            n += os.readlink(f"{fds}/{fd}").startswith("pipe:")
        except FileNotFoundError:
            pass
    return n


def test_error_a_run_longer_than_the_time_limit_is_stopped(tmp_path):
    bb = Backbone(endless_bundle(tmp_path), time_limit=0.5)
    start = time.monotonic()
    with pytest.raises(ValueError, match="stopped on samples 0..2: it ran for more than the time limit of 0.5 s"):
        bb.rows(np.ones((3, 2), np.float32))
    assert time.monotonic() - start < 3


@pytest.mark.parametrize("sig, code, said", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")])
def test_a_signal_ends_a_command_inside_an_endless_backbone_run_within_a_second(tmp_path, sig, code, said):
    """`eval` on a model with a 2^62-iteration Loop hung; SIGTERM and SIGINT were ignored until SIGKILL."""
    bundle = endless_bundle(tmp_path)
    np.savez(tmp_path / "d.npz", x=np.ones((3, 2), np.float32), y=np.zeros(3, np.int64))
    proc = subprocess.Popen([sys.executable, "-m", "edgelora.cli", "eval", str(bundle), "--data", str(tmp_path / "d.npz")],
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": REPO, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"},
                            preexec_fn=default_ctrl_c)
    try:
        deadline = time.monotonic() + 60               # the command runs once its signal pipe is open
        while pipes(proc.pid) < 2 and time.monotonic() < deadline:   # (stderr is the first)
            time.sleep(0.1)
        time.sleep(2)                                  # then well inside the endless run
        assert proc.poll() is None
        proc.send_signal(sig)
        start = time.monotonic()
        err = proc.communicate(timeout=10)[1]
        assert time.monotonic() - start < 1.0 and proc.returncode == code, err
        assert f"interrupted by {said}" in err and "Traceback" not in err
    finally:
        proc.kill()


def test_leaving_on_signals_does_not_wait_for_the_watchers_next_poll():
    from edgelora.runtime.stop import on_signals
    start = time.perf_counter()
    for _ in range(10):
        with on_signals():
            pass
    assert time.perf_counter() - start < 0.5     # measured: 1.0 s when each exit waited for the 0.1 s poll
