"""Fuzzing the JSON parsers: bundle manifest and adapter config (hypothesis, 1,000 examples each).

The contract (see edgelora/files/data.py): reading a file that edgelora did not write itself - a manifest,
an adapter, a checkpoint, a data file - either succeeds or raises ValueError, TypeError or
FileNotFoundError with a message naming the file. Never another exception, a crash or a hang.
"""
import copy
import json
import shutil
import signal
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save as st_save

from edgelora import Backbone, TrainConfig, finetune, load_adapter
from edgelora.files.adapter import CONFIG_FILE, WEIGHTS_FILE
from edgelora.files.bundle import MANIFEST_FILE, load_manifest

CONTRACT = (ValueError, TypeError, FileNotFoundError)
FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))

# any JSON value, small and large, including the awkward ones: huge integers, deep nesting, odd strings
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=-2**70, max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
    | st.sampled_from(["", "..", "../../etc/passwd", "/abs", "sha256:" + "0" * 64, "float32", "N", "auto"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


@pytest.fixture(autouse=True)
def no_hang():
    """A hang is a failure: SIGALRM if one fuzz test runs for more than 5 minutes."""
    def fail(*_):
        raise AssertionError("fuzz target hung")
    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(300)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def mutate(data, draw_ops):
    """Apply a list of (path choices, op, value) edits to a copy of a nested JSON structure."""
    data = copy.deepcopy(data)
    for choices, op, value in draw_ops:
        parent, key, node = None, None, data
        for c in choices:  # walk down a random path
            if isinstance(node, dict) and node:
                k = sorted(node)[c % len(node)]
            elif isinstance(node, list) and node:
                k = c % len(node)
            else:
                break
            parent, key, node = node, k, node[k]
        if parent is None:
            target, key = (data, None)
        else:
            target = parent
        if op == "replace" and key is not None:
            target[key] = value
        elif op == "delete" and key is not None:
            del target[key]
        elif op == "add" and isinstance(node, dict):
            node[f"extra{len(node)}"] = value
        elif op == "add" and isinstance(node, list):
            node.append(value)
        elif op == "root":
            data = value
    return data


OPS = st.lists(st.tuples(st.lists(st.integers(0, 50), max_size=5), st.sampled_from(["replace", "delete", "add", "root"]),
                         JSON), min_size=1, max_size=4)


def byte_edits(raw: bytes, edits) -> bytes:
    b = bytearray(raw)
    for pos, kind, value in edits:
        i = pos % (len(b) + 1)
        if kind == "flip" and i < len(b):
            b[i] ^= value or 1
        elif kind == "insert":
            b[i:i] = bytes([value])
        elif kind == "delete":
            del b[i:i + 1 + value % 8]
        elif kind == "truncate":
            del b[i:]
    return bytes(b)


BYTE_EDITS = st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(["flip", "insert", "delete", "truncate"]),
                                st.integers(0, 255)), min_size=1, max_size=6)


@pytest.fixture(scope="module")
def bundle_and_adapter(tmp_path_factory):
    from tests.helpers import mlp_bundle, random_mlp
    root = tmp_path_factory.mktemp("fuzz")
    mlp_bundle(root / "bundle", random_mlp([4, 3, 2]), ["a", "b"], mean=np.zeros(4), std=np.ones(4))
    bb = Backbone(root / "bundle")
    rng = np.random.default_rng(0)
    adapter, _ = finetune(bb, rng.standard_normal((40, 4)).astype(np.float32), np.repeat([0, 1], 20),
                          TrainConfig(epochs=1, batch_size=10))
    adapter.save(root / "adapter")
    return root, bb


@pytest.fixture
def scratch(tmp_path):
    """A folder for the examples' files: in RAM when /dev/shm exists (thousands of small files), removed after."""
    shm = Path("/dev/shm")
    work = Path(tempfile.mkdtemp(prefix="edgelora-fuzz-", dir=shm if shm.is_dir() else tmp_path))
    yield work
    shutil.rmtree(work, ignore_errors=True)


def _check(fn, outcomes=None):
    try:
        fn()
        outcome = "ok"
    except CONTRACT as e:
        assert str(e), "an error without a message"
        outcome = type(e).__name__ + ": " + " ".join(str(e).split()[1:4])
    if outcomes is not None:
        outcomes[outcome] = outcomes.get(outcome, 0) + 1


def test_fuzz_manifest_parser(bundle_and_adapter, scratch):
    root, _ = bundle_and_adapter
    good = json.loads((root / "bundle" / MANIFEST_FILE).read_text())
    raw = (root / "bundle" / MANIFEST_FILE).read_bytes()
    work = scratch
    count = [0]

    @FUZZ
    @given(structured=st.booleans(), ops=OPS, edits=BYTE_EDITS)
    def run(structured, ops, edits):
        count[0] += 1
        folder = work / f"b{count[0]}"  # a new file each time (rewriting one is slow on ext4)
        folder.mkdir()
        data = json.dumps(mutate(good, ops)).encode() if structured else byte_edits(raw, edits)
        (folder / MANIFEST_FILE).write_bytes(data)
        _check(lambda: load_manifest(folder))
    run()
    assert count[0] >= 1000


def test_fuzz_adapter_config_parser(bundle_and_adapter, scratch):
    """Mutated configs; half of them beside weights without checksums (a hand-made or legacy adapter),
    so that the mutations reach the weight loading instead of stopping at the checksum."""
    root, bb = bundle_and_adapter
    good = json.loads((root / "adapter" / CONFIG_FILE).read_text())
    raw = (root / "adapter" / CONFIG_FILE).read_bytes()
    weights = (root / "adapter" / WEIGHTS_FILE).read_bytes()
    from edgelora.files.readers import parse_safetensors
    plain = st_save(parse_safetensors(weights, "w")[0])  # no config checksum in its metadata
    unchecked = {**good, "weights_sha256": ""}
    work = scratch
    count = [0]

    @FUZZ
    @given(structured=st.booleans(), gated=st.booleans(), ops=OPS, edits=BYTE_EDITS, manifest=st.booleans())
    def run(structured, gated, ops, edits, manifest):
        count[0] += 1
        folder = work / f"a{count[0]}"
        folder.mkdir()
        base = good if gated else unchecked
        data = json.dumps(mutate(base, ops)).encode() if structured else \
            byte_edits(raw if gated else json.dumps(unchecked).encode(), edits)
        (folder / CONFIG_FILE).write_bytes(data)
        (folder / WEIGHTS_FILE).write_bytes(weights if gated else plain)
        _check(lambda: load_adapter(folder, bb.manifest if manifest else None))
    run()
    assert count[0] >= 1000
