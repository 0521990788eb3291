"""device_bench: the numpy baseline engine against torch, the worker protocol, and a smoke run end to end."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgelora.graphs.onnx_chain import load_chain
from edgelora.core.backprop import Engine, init_params
from device_bench.profile import peak_rss_mb
from device_bench.protocols import DATASETS
from edgelora import Backbone
from edgelora.core.lora import split
from tests.helpers import mlp_bundle, no_datasets, random_mlp

MODES = {"ft-all": "full", "lora-all": "lora"}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """An MLP (onnx.helper) and a 1D and a 2D CNN exported by export/ (the reference families)."""
    tmp_path = tmp_path_factory.mktemp("bench_bundles")
    out = [(mlp_bundle(tmp_path / "mlp", random_mlp([12, 8, 8, 3])) and tmp_path / "mlp", (12,))]
    torch = pytest.importorskip("torch")
    from edgelora_export import export_model
    from edgelora_export.models import CNN1d, CNN2d
    torch.manual_seed(0)
    export_model(CNN1d(3, 4, width=6), torch.randn(2, 16, 3), tmp_path / "cnn1d")
    export_model(CNN2d(5, width=4), torch.randn(2, 10, 9), tmp_path / "cnn2d")
    # the fsdd/mnist reference shape: stride-2 first conv, mean over H only, then Reshape
    export_model(CNN2d(5, width=4, pool_width=3, strided=True), torch.randn(2, 10, 12), tmp_path / "cnn2d_strided")
    return out + [(tmp_path / "cnn1d", (16, 3)), (tmp_path / "cnn2d", (10, 9)), (tmp_path / "cnn2d_strided", (10, 12))]


def _torch_grads(chain, modes, p, x, dy, r, scale):
    """The same network in torch (device_bench.torch_net, as the torch methods build it) and its gradients."""
    import torch
    from device_bench import torch_net
    net = torch_net.build(chain)
    layers = torch_net.weight_layers(net)
    net.requires_grad_(False)
    for i, m in enumerate(modes):
        if m == "full":
            net[layers[i]].requires_grad_(True)
        elif m == "lora":
            torch_net.with_lora(net, [layers[i]], r, scale * r)
            lo = net[layers[i]]
            lo.A.weight.data = torch.from_numpy(p[f"A{i}"].T.reshape(lo.A.weight.shape).copy())
            lo.B.weight.data = torch.from_numpy(p[f"B{i}"].T.reshape(lo.B.weight.shape).copy())
    out = net(torch.from_numpy(x))
    (out * torch.from_numpy(dy)).sum().backward()
    grads = {}
    for i, m in enumerate(modes):
        mod = net[layers[i]]
        if m == "full":
            grads[f"W{i}"] = mod.weight.grad.numpy().reshape(mod.weight.shape[0], -1).T
            grads[f"b{i}"] = mod.bias.grad.numpy()
        elif m == "lora":
            grads[f"A{i}"] = mod.A.weight.grad.numpy().reshape(r, -1).T
            grads[f"B{i}"] = mod.B.weight.grad.numpy().reshape(mod.B.weight.shape[0], -1).T
    return out.detach().numpy(), grads


@pytest.mark.torch
@pytest.mark.parametrize("method", ["ft-all", "lora-all", "lora-all-factored", "ft-last", "lora-last"])
def test_engine_gradients_match_torch(bundles, method):
    for bundle, shape in bundles:
        chain = load_chain(bundle)
        n_layers = chain.num_layers
        mode = MODES[method.replace("last", "all").removesuffix("-factored")]
        modes = [mode] * n_layers if "all" in method else ["frozen"] * (n_layers - 1) + [mode]
        r, scale = 3, 2.0
        eng = Engine(chain, modes, r, scale)
        if mode == "lora":   # both ways of running a LoRA layer: merged (x (W + s A B)) and factored
            eng.merged = [m == "lora" and not method.endswith("factored") for m in modes]
        flat, shapes = init_params(chain, modes, r, seed=0)
        p = split(flat, shapes)
        rng = np.random.default_rng(1)
        for k in p:
            if k.startswith("B"):   # B = 0 at init would leave dA = 0: test with a non-zero B
                p[k][:] = rng.standard_normal(p[k].shape) * 0.3
        x = chain.prep(rng.standard_normal((5,) + shape).astype(np.float32))
        out, saved = eng.forward(p, eng.prefix(x))
        dy = rng.standard_normal(out.shape).astype(np.float32)
        grad = np.zeros_like(flat)
        g = split(grad, shapes)
        eng.backward(dy, saved, p, g)
        t_out, t_grads = _torch_grads(chain, modes, p, x, dy, r, scale)
        np.testing.assert_allclose(out, t_out, rtol=1e-4, atol=1e-5)
        assert set(t_grads) == set(g)
        for k, v in t_grads.items():
            np.testing.assert_allclose(g[k], v, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(v).max()),
                                       err_msg=f"{bundle.name} {method} d{k}")


@pytest.mark.parametrize("merged", [True, False])
def test_engine_from_a_stem_gives_the_same_outputs_and_gradients(bundles, merged):
    """The first trainable layer's columns and frozen output computed once (Stem) == computed every step."""
    for bundle, shape in bundles:
        chain = load_chain(bundle)
        eng = Engine(chain, ["lora"] * chain.num_layers, 3, 2.0)
        eng.merged = [merged] * chain.num_layers
        flat, shapes = init_params(chain, eng.modes, 3, seed=0)
        rng = np.random.default_rng(1)
        flat += rng.standard_normal(flat.size).astype(np.float32) * 0.3
        p, x = split(flat, shapes), chain.prep(rng.standard_normal((7,) + shape).astype(np.float32))
        b = np.array([5, 1, 2])
        grads = []
        for first in (None, eng.stem(x, 1 << 30).rows(b)):
            out, saved = eng.forward(p, None if first else eng.prefix(x[b]), first=first)
            grad = np.zeros_like(flat)
            eng.backward(np.ones_like(out), saved, p, split(grad, shapes))
            grads.append((out, grad))
        np.testing.assert_allclose(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-5, err_msg=bundle.name)
        np.testing.assert_allclose(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-4, err_msg=bundle.name)


@pytest.mark.torch
def test_chain_forward_matches_onnxruntime(bundles):
    for bundle, shape in bundles:
        chain = load_chain(bundle)
        eng = Engine(chain, ["frozen"] * chain.num_layers)
        x = np.random.default_rng(0).standard_normal((7,) + shape).astype(np.float32)
        ours = eng.forward({}, chain.prep(x), save=False, start=0)[0]
        np.testing.assert_allclose(ours, Backbone(bundle).features(x)[0], rtol=1e-4, atol=1e-5)


def test_error_unsupported_op_is_named(tmp_path):
    import onnx
    folder = tmp_path / "mlp"
    mlp_bundle(folder, random_mlp([4, 3]))
    model = onnx.load(str(folder / "backbone.onnx"))
    for node in model.graph.node:
        if node.op_type == "Gemm":
            node.op_type = "Gelu"    # not one of the supported ops (the file is not re-fingerprinted: parse only)
    onnx.save(model, str(folder / "backbone.onnx"))
    with pytest.raises(ValueError, match="Gelu"):
        load_chain(folder)


def test_peak_rss_is_this_process_image():
    """VmHWM, not ru_maxrss (which Linux carries over from the parent across fork+exec)."""
    code = "from device_bench.profile import peak_rss_mb; print(peak_rss_mb())"
    child = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 0 < child < 200
    assert peak_rss_mb() > 0


def test_error_cli_unknown_method():
    proc = subprocess.run([sys.executable, "-m", "device_bench", "run", "--protocol", "fan", "--methods", "sgd-magic",
                           "--seeds", "1"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown method(s) ['sgd-magic']" in proc.stderr


@pytest.mark.torch
@pytest.mark.skipif(not (DATASETS / "cooling_fan").is_dir(), reason=no_datasets(DATASETS / "cooling_fan"))
def test_smoke_run_end_to_end(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    from device_bench.config import METHODS
    from device_bench.run import smoke
    results = smoke(tmp_path / "out", tmp_path / "bundles", log=lambda *_: None)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(saved["methods"]) == {m for m in METHODS if not m.startswith("ort-")}  # ort-*: --ort-python only
    for m in saved["methods"].values():
        assert 0 <= m["accuracy_mean"] <= 1 and m["seconds_mean"] > 0 and m["peak_rss_mb"] > 0
        assert m["trainable_params"] > 0
        assert abs(sum(m["breakdown"].values()) - m["seconds_mean"]) <= 0.05 * m["seconds_mean"] + 1e-3
    # torch stays out of the numpy and edgelora processes: their RSS is far below a torch process's
    assert saved["methods"]["skip2-lora"]["rss_after_imports_mb"] < saved["methods"]["torch-ft-all"]["rss_after_imports_mb"] - 50
    assert {t["id"] for t in saved["targets"]} >= {"skip2_vs_torch_ft_all", "skip2_vs_np_lora_all", "cached_epoch_linear"}
    assert "| Skip2-LoRA |" in (tmp_path / "out" / "results.md").read_text()
    plots = [Path(p) for p in results["plots"]]         # written by this run, into its own fresh folder
    assert {"breakdown.png", "accuracy_vs_time.png"} <= {p.name for p in plots}
    assert all(p.parent == tmp_path / "out" and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)
