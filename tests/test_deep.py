"""The deep tier (runtime/deep.py): LoRA inside the backbone's layers trained by numpy backprop, its PEFT files
(files/deep_adapter.py), its merge (graphs/deep_merge.py) and serving, the auto rule, and bad input."""
import dataclasses
import json
import math
import shutil
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgelora import Backbone
from edgelora.cli.finetune_report import _tier_lines
from edgelora.core import deep_loop
from edgelora.core.backprop import Engine, init_params
from edgelora.core.lora import split
from edgelora.files.adapter import load_adapter
from edgelora.graphs.merge import export_ort_adapter, merge
from edgelora.graphs.onnx_chain import load_chain
from edgelora.graphs.onnx_taps import add_taps
from edgelora.runtime import deep, deep_checkpoint, deep_cost
from edgelora.runtime.cache import SkipCache
from edgelora.runtime.predict import Predictor
from edgelora.runtime.train import finetune
from edgelora.runtime.train_config import TrainConfig
from tests.helpers import mlp_bundle, random_mlp


def bn_graph(act: str = "Relu") -> onnx.ModelProto:
    """x (N, 3, 16) -> Conv -> BatchNormalization (inference) -> act -> Flatten -> Gemm(transB) -> logits (4)."""
    rng = np.random.default_rng(1)
    inits = {"w0": rng.normal(size=(5, 3, 3)) / 3, "b0": rng.normal(size=5) * 0.1, "g": rng.uniform(0.5, 2, 5),
             "beta": rng.normal(size=5), "mu": rng.normal(size=5), "var": rng.uniform(0.5, 2, 5),
             "w1": rng.normal(size=(4, 80)) / 9, "b1": rng.normal(size=4) * 0.1}
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c"], pads=[1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "beta", "mu", "var"], ["n"], epsilon=1e-5),
             helper.make_node(act, ["n"], ["a"]), helper.make_node("Flatten", ["a"], ["f"]),
             helper.make_node("Gemm", ["f", "w1", "b1"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture(scope="module")
def bn_bundle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("deep") / "bn"
    add_taps(bn_graph(), folder)
    return folder


def samples(n=40, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 4
    x = rng.normal(size=(n, 3, 16)) + y[:, None, None] * np.linspace(-1, 1, 16)
    return x.astype(np.float32), y


@pytest.mark.parametrize("merged", [True, False])
def test_engine_with_batchnorm_matches_onnxruntime_and_numeric_gradients(bn_bundle, merged):
    chain = load_chain(bn_bundle)
    assert [op.kind for op in chain.ops] == ["conv", "affine", "relu", "reshape", "linear"]
    eng = Engine(chain, ["lora", "lora"], 2, 2.0)
    assert [op.kind for op in eng.ops] == ["conv", "relu", "reshape", "linear"]   # the batch-norm folded in
    eng.merged = [merged, merged]
    flat, shapes = init_params(chain, eng.modes, 2, 0)
    flat += np.random.default_rng(2).normal(size=flat.size).astype(np.float32) * 0.1   # B != 0
    p = split(flat, shapes)
    x, _ = samples(6)
    base = ort.InferenceSession(bn_graph().SerializeToString()).run(None, {"x": x})[0]
    zero = split(np.zeros_like(flat), shapes)
    assert np.abs(eng.forward(zero, x, save=False)[0] - base).max() < 1e-5
    y, saved = eng.forward(p, x)
    dy = np.random.default_rng(3).normal(size=y.shape).astype(np.float32)
    grad = np.zeros_like(flat)
    eng.backward(dy, saved, p, split(grad, shapes))
    f64 = Engine(chain, ["lora", "lora"], 2, 2.0)
    f64.merged = [merged, merged]
    ends = np.cumsum([0] + [int(np.prod(v)) for v in shapes.values()])   # a few entries of every A and B
    rng = np.random.default_rng(4)
    for i in np.concatenate([rng.choice(np.arange(lo, hi), 4, replace=False) for lo, hi in zip(ends[:-1], ends[1:])]):
        e = np.zeros_like(flat, dtype=np.float64)
        e[i] = 1e-3
        hi = (f64.forward(split((flat + e).astype(np.float64), shapes), x.astype(np.float64), save=False)[0] * dy).sum()
        lo = (f64.forward(split((flat - e).astype(np.float64), shapes), x.astype(np.float64), save=False)[0] * dy).sum()
        assert abs((hi - lo) / 2e-3 - grad[i]) < 1e-3 * max(1.0, abs(grad[i]))


def test_deep_adapter_saves_loads_merges_and_serves_the_same_outputs(bn_bundle, tmp_path):
    bb, (x, y) = Backbone(bn_bundle), samples()
    adapter, history = finetune(bb, x, y, TrainConfig(form="deep", cv_folds=0, epochs=10))
    assert history.chosen["tier"] == "deep" and history.chosen["epochs"] == deep.budget(TrainConfig(epochs=10), 40)
    adapter.save(tmp_path / "a")
    loaded = load_adapter(tmp_path / "a", bb.manifest)
    doc = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert doc["peft_type"] == "LORA" and doc["target_modules"] == ["w0", "w1"]  # no torch names: ONNX names
    served = Predictor(bb, loaded).outputs(x)
    chain = load_chain(bn_bundle)
    eng = deep_loop.engine(chain, loaded.config.r, loaded.config.scale)
    p = {}
    for j, name in enumerate(loaded.config.initializers):
        p[f"A{j}"], p[f"B{j}"] = loaded.params[name]
    numpy_out = deep_loop.outputs(eng, p, chain.prep(x))
    merge(bn_bundle, tmp_path / "a", tmp_path / "m.onnx")
    merged = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"x": x})[0]
    assert np.abs(served - numpy_out).max() < 1e-5 and np.abs(merged - served).max() < 1e-5
    assert np.abs(served - bb.features(x)[0]).max() > 1e-2            # the adapter changed something
    assert (served.argmax(1) == y).mean() > (bb.features(x)[0].argmax(1) == y).mean()


def test_peft_loads_the_adapter_onto_the_torch_model_with_the_same_outputs(tmp_path):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from torch import nn
    from edgelora_export import export_model

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv1d(3, 6, 3, padding=1), nn.BatchNorm1d(6)
            self.fc = nn.Linear(6 * 8, 4)

        def forward(self, x):
            return self.fc(torch.max_pool1d(torch.relu(self.bn1(self.conv1(x))), 2).flatten(1))
    torch.manual_seed(0)
    net = Net().eval()
    net.bn1.running_mean.normal_()
    net.bn1.running_var.uniform_(0.5, 2.0)
    net.bn1.weight.data.uniform_(0.5, 2.0)
    manifest = export_model(net, torch.zeros(2, 3, 16), tmp_path / "bundle", preprocess={"x": (0.5, 2.0)})
    assert {w.module for w in manifest.torch_weights} == {"conv1", "fc"}
    # the batch-norm stays a node of its own (kept addressable for re-calibration), so conv1's weight is torch's
    assert [n.name for n in manifest.normalization] == ["bn1"] and not any(w.out_scale for w in manifest.torch_weights)
    bb, (x, y) = Backbone(tmp_path / "bundle"), samples()
    adapter, _ = finetune(bb, x, y, TrainConfig(form="deep", cv_folds=0, epochs=5))
    adapter.save(tmp_path / "a")
    ours = Predictor(bb, load_adapter(tmp_path / "a", bb.manifest)).outputs(x)
    rc = adapter.config.recalibration          # re-estimated on the samples before training: torch gets them too
    assert rc.kind == "bn" and set(rc.normalization) == {"bn1"} and not rc.preprocess
    net.bn1.running_mean.copy_(torch.tensor(rc.normalization["bn1"].mean))
    net.bn1.running_var.copy_(torch.tensor(rc.normalization["bn1"].var))
    model = peft.PeftModel.from_pretrained(net, str(tmp_path / "a")).eval()
    with torch.no_grad():
        theirs = model(torch.from_numpy((x - 0.5) / 2.0)).numpy()
    merge(tmp_path / "bundle", tmp_path / "a", tmp_path / "m.onnx")             # standardisation baked in
    merged = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"x": x})[0]
    chain, _, _ = deep.load(SimpleNamespace(cache=SimpleNamespace(backbone=bb), inputs={"x": x}))
    p = {k: v for j, name in enumerate(adapter.config.initializers)
         for k, v in zip((f"A{j}", f"B{j}"), adapter.params[name])}
    numpy_out = deep_loop.outputs(deep_loop.engine(chain, adapter.config.r, adapter.config.scale), p, chain.prep(x))
    # float32 outputs of three engines (logits up to ~30 here): within 1e-5, relative to each value
    np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(merged, ours, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(numpy_out, ours, rtol=1e-5, atol=1e-5)   # the engine trained over the same statistics
    assert np.abs(ours - bb.features(x)[0]).max() > 1e-2


def test_auto_escalates_by_the_stated_rule(bn_bundle):
    bb, (x, y) = Backbone(bn_bundle), samples()
    adapter, history = finetune(bb, x, y, TrainConfig(epochs=5))
    d = history.selection["deep"]
    assert d["considered"] == (1.0 - d["skip_score"] > d["skip_spread"])
    if d["considered"]:
        assert d["needed"] <= 0 and d["needed"] >= -d["skip_spread"] / np.sqrt(d["deep_folds"][1])
        base = history.selection["no_finetune"]["score"]        # the backbone alone, on the same folds
        assert d["won"] == (d["deep_score"] >= d["skip_score"] + d["needed"] and d["deep_score"] > base)
        assert (type(adapter).__name__ == "DeepAdapter") == d["won"] == (history.chosen.get("tier") == "deep")
    deep.AUTO_MAX_SAMPLES, was = 10, deep.AUTO_MAX_SAMPLES   # more samples than that: the skip adapter stays
    try:
        kept, h = finetune(bb, x, y, TrainConfig(epochs=5))
    finally:
        deep.AUTO_MAX_SAMPLES = was
    assert not h.selection["deep"]["considered"] and type(kept).__name__ == "Adapter"
    skip, h = finetune(bb, x, y, TrainConfig(epochs=5, form="skip"))
    assert "deep" not in h.selection and type(skip).__name__ == "Adapter"


def test_the_paired_error_is_that_of_the_per_fold_differences_and_only_for_the_same_folds():
    assert deep._paired_error([0.8, 0.6, 0.7], [0.7, 0.5, 0.6]) == pytest.approx(0.0, abs=1e-12)  # always 10 points
    assert deep._paired_error([0.8, 0.6], [0.6, 0.6]) == pytest.approx(0.1 / np.sqrt(2))
    assert deep._paired_error([0.8, 0.6, 0.7], [0.7, 0.5]) == np.inf          # the deep one stopped after 2 folds
    assert deep._paired_error(None, [0.7]) == np.inf and deep._paired_error([None], [0.7]) == np.inf


def test_deep_cross_validation_stops_once_it_cannot_win_and_only_then(bn_bundle):
    chain, (x, y) = load_chain(bn_bundle), samples()
    eng, cfg, xp = deep_loop.engine(chain, 4, 2.0), TrainConfig(seed=0), chain.prep(x)
    run = dict(k=4, marks=[2, 4], weight_decay=1e-2, task="classification")
    full = deep_loop.cross_validate(eng, xp, y, cfg, **run)
    best = max(row["score"] for row in full.values())
    assert deep_loop.cross_validate(eng, xp, y, cfg, reach=best, **run) == full   # it reaches it: never stopped
    stopped = deep_loop.cross_validate(eng, xp, y, cfg, reach=1.01, **run)     # no score is above 100 %
    assert {row["folds_done"] for row in stopped.values()} == {1}
    for m, row in stopped.items():
        assert row["score"] <= row["bound"] <= 1.0 and row["bound"] >= full[m]["score"]


def test_auto_skips_a_deep_tier_projected_over_its_cpu_budget(bn_bundle, monkeypatch):
    bb, (x, y) = Backbone(bn_bundle), samples()
    clock = iter(np.arange(0, 100, 0.01))              # every timed probe step takes 0.01 CPU s, per batch of 20
    monkeypatch.setattr(deep_cost.time, "process_time", lambda: float(next(clock)))
    cfg = TrainConfig(epochs=5, cv_folds=4)
    eng = deep_loop.engine(load_chain(bn_bundle), 4, 2.0)
    n = len(y)                                         # 4 folds: 4 trainings on 3/4 of the rows, then the refit
    steps = 4 * np.ceil(n * 3 / 4 / 20) + np.ceil(n / 20)
    assert deep_cost.projected_seconds(eng, eng.chain.prep(x), n, cfg, 5) == pytest.approx(0.01 * 5 * steps)
    kept, h = finetune(bb, x, y, dataclasses.replace(cfg, deep_seconds=1e-6))
    d = h.selection["deep"]                            # considered, projected over 1e-6 s: the skip adapter stays
    assert d["considered"] and not d["won"] and d["projected_seconds"] > 1e-6 and type(kept).__name__ == "Adapter"
    assert "deep_seconds" in d["unavailable"] and "--form deep" in d["unavailable"]


def test_memory_need_counts_a_merged_layers_update_once_a_step(tmp_path):
    mlp_bundle(tmp_path / "m", random_mlp([64, 128, 128, 10]))
    eng = deep_loop.engine(load_chain(tmp_path / "m"), 32, 2.0)
    assert eng.merged[1:] == [True, True]              # 128 x 128 and 128 x 10 at r 32: merged, (d_in, d_out) saved
    x = np.random.default_rng(0).standard_normal((40, 64)).astype(np.float32)
    per_sample = (deep_cost.memory_need(eng, x, 34) - deep_cost.memory_need(eng, x, 2)) / 32
    # what one more sample saves: columns and masks of three layers, and their gradients (~3 kB); a merged
    # update (128 x 128 floats, 64 kB) counted per sample would make it 30 times that
    assert 0 < per_sample < 4 * 4 * (64 + 128 + 128 + 10)


@pytest.mark.parametrize("ratio", [0.9, 1.1, 1.3])
def test_a_projection_close_to_the_cpu_budget_is_reported_as_such(bn_bundle, monkeypatch, ratio):
    bb, (x, y) = Backbone(bn_bundle), samples()
    monkeypatch.setattr(deep, "projected_seconds", lambda *a: 10.0 * ratio)
    _, h = finetune(bb, x, y, TrainConfig(epochs=3, deep_seconds=10.0))
    d = h.selection["deep"]
    assert d["near_budget"] == (ratio != 1.3)
    if ratio > 1:
        assert ("within 15% of the budget" in d["unavailable"]) == d["near_budget"]
        assert f"--deep-budget {math.ceil(10 * ratio)}" in d["unavailable"]
    else:
        assert "unavailable" not in d and "close to --deep-budget" in "\n".join(_tier_lines(d, "classification"))


def test_error_unsupported_op_is_named_and_auto_keeps_the_skip_adapter(tmp_path):
    add_taps(bn_graph("Sigmoid"), tmp_path / "b")
    with pytest.raises(ValueError, match="Sigmoid"):
        load_chain(tmp_path / "b")
    bb, (x, y) = Backbone(tmp_path / "b"), samples()
    with pytest.raises(ValueError, match="Sigmoid"):
        finetune(bb, x, y, TrainConfig(form="deep", cv_folds=0))


def test_error_deep_requests_that_cannot_work(bn_bundle, tmp_path):
    bb, (x, y) = Backbone(bn_bundle), samples()
    with pytest.raises(ValueError, match="use_cache"):
        finetune(bb, x, y, TrainConfig(form="deep", cv_folds=0), use_cache=False)
    r = deep.settings(TrainConfig(form="deep"))["r"]
    need = deep_cost.memory_need(deep_loop.engine(load_chain(bn_bundle), r, 2.0), x, 20)
    with pytest.raises(ValueError, match=f"needs about {need:,} bytes .* memory budget of 20,000 bytes"):
        finetune(bb, x, y, TrainConfig(form="deep", cv_folds=0, epochs=2), cache=SkipCache(bb, memory_budget=20000))
    kept, h = finetune(bb, x, y, TrainConfig(epochs=3), cache=SkipCache(bb, memory_budget=20000))
    assert type(kept).__name__ == "Adapter" and "memory budget" in h.selection["deep"]["unavailable"]
    adapter, _ = finetune(bb, x, y, TrainConfig(form="deep", cv_folds=0, epochs=2))
    adapter.save(tmp_path / "a")
    alone = load_adapter(tmp_path / "a")          # without the manifest too: the file carries what it needs
    assert all(np.array_equal(alone.params[k][1], adapter.params[k][1]) for k in adapter.params)
    with pytest.raises(ValueError, match="merge"):
        export_ort_adapter(bn_bundle, tmp_path / "a", tmp_path / "x.onnx_adapter")
    mlp = tmp_path / "mlp"
    mlp_bundle(mlp, random_mlp([48, 4]))
    with pytest.raises(ValueError, match="another backbone"):
        load_adapter(tmp_path / "a", Backbone(mlp).manifest)
    shutil.copytree(tmp_path / "a", tmp_path / "bad")
    blob = bytearray((tmp_path / "bad" / "adapter_model.safetensors").read_bytes())
    blob[-3] ^= 0xFF
    (tmp_path / "bad" / "adapter_model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="adapter_model.safetensors"):
        load_adapter(tmp_path / "bad", bb.manifest)


def test_mixed_batches_serve_deep_and_skip_adapters_row_by_row(bn_bundle, tmp_path):
    from edgelora.ops.serve import AdapterServer
    from edgelora.ops.store import AdapterStore
    bb, (x, y) = Backbone(bn_bundle), samples()
    deep_a, _ = finetune(bb, x, y, TrainConfig(form="deep", cv_folds=0, epochs=3))
    skip_a, _ = finetune(bb, x, y, TrainConfig(form="skip", cv_folds=0, epochs=3, tap_scaling="none"))
    store = AdapterStore(tmp_path / "store")
    for name, a in (("d", deep_a), ("s", skip_a)):
        store.add_version(name, a, parent=None, samples=len(y))
        store.set_current(name, 1)
    server = AdapterServer(bb, store)
    names = ["d", "s", None, "d"] * 10
    got = server.outputs(x, names)
    want = {"d": Predictor(bb, deep_a).outputs(x), "s": Predictor(bb, skip_a).outputs(x), None: bb.features(x)[0]}
    for i, name in enumerate(names):
        assert np.abs(got[i] - want[name][i]).max() < 1e-5, (i, name)
    assert np.abs(server.outputs(x[:3], "d") - want["d"][:3]).max() < 1e-5


def _crash_after_4_saves(monkeypatch):
    """Make the deep tier's 4th checkpoint save end the run with Ctrl-C; returns the real save."""
    real, calls = deep_checkpoint.save_checkpoint, []

    def crash_after_4(*args):
        real(*args)
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
    monkeypatch.setattr(deep_checkpoint, "save_checkpoint", crash_after_4)
    return real


def test_an_interrupted_deep_fine_tune_resumes_to_the_same_adapter(bn_bundle, tmp_path, monkeypatch):
    bb, (x, y) = Backbone(bn_bundle), samples()
    config = TrainConfig(form="deep", epochs=10)
    whole, _ = finetune(bb, x, y, config)
    real = _crash_after_4_saves(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        finetune(bb, x, y, config, checkpoint_dir=tmp_path / "ck")
    later = []
    monkeypatch.setattr(deep_checkpoint, "save_checkpoint", lambda *a: (real(*a), later.append(1)))
    resumed, h = finetune(bb, x, y, config, checkpoint_dir=tmp_path / "ck", resume=True)
    assert len(later) == h.chosen["epochs"] - 4           # it continued after the 4th epoch
    for name, (a, b) in whole.params.items():
        assert np.array_equal(a, resumed.params[name][0]) and np.array_equal(b, resumed.params[name][1])
    with pytest.raises(ValueError, match="another run"):
        finetune(bb, x, y[::-1].copy(), config, checkpoint_dir=tmp_path / "ck", resume=True)


def test_an_interrupted_auto_fine_tune_that_escalated_resumes_its_deep_refit(bn_bundle, tmp_path, monkeypatch):
    bb, (x, y) = Backbone(bn_bundle), samples(seed=3)
    config = TrainConfig(epochs=10)
    whole, first = finetune(bb, x, y, config)
    assert first.chosen["tier"] == "deep"                  # the auto rule escalated on these samples
    real = _crash_after_4_saves(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        finetune(bb, x, y, config, checkpoint_dir=tmp_path / "ck")
    assert deep_checkpoint.resumes(tmp_path / "ck", True) and not deep_checkpoint.resumes(tmp_path / "ck", False)
    later = []
    monkeypatch.setattr(deep_checkpoint, "save_checkpoint", lambda *a: (real(*a), later.append(1)))
    resumed, h = finetune(bb, x, y, config, checkpoint_dir=tmp_path / "ck", resume=True)
    # the 4 saves: the tier decision (epoch 0), then 3 epochs; no skip run, no cross-validation: the refit went on
    assert len(later) == h.chosen["epochs"] - 3
    assert h.selection["deep"]["won"] and h.selection["deep"]["skip_score"] == first.selection["deep"]["skip_score"]
    for name, (a, b) in whole.params.items():
        assert np.array_equal(a, resumed.params[name][0]) and np.array_equal(b, resumed.params[name][1])


def test_an_auto_run_interrupted_after_the_tier_decision_does_not_cross_validate_the_deep_tier_again(
        bn_bundle, tmp_path, monkeypatch):
    bb, (x, y) = Backbone(bn_bundle), samples(seed=3)
    config = TrainConfig(epochs=10)
    whole, first = finetune(bb, x, y, config)
    assert first.chosen["tier"] == "deep"
    real = deep.finetune_deep

    def interrupted(*a, **k):   # Ctrl-C once the deep tier has won, before its refit's first epoch
        raise KeyboardInterrupt
    monkeypatch.setattr(deep, "finetune_deep", interrupted)
    with pytest.raises(KeyboardInterrupt):
        finetune(bb, x, y, config, checkpoint_dir=tmp_path / "won")
    monkeypatch.setattr(deep, "finetune_deep", real)
    runs = []
    monkeypatch.setattr(deep, "cross_validate", lambda *a, **k: runs.append(1))
    resumed, h = finetune(bb, x, y, config, checkpoint_dir=tmp_path / "won", resume=True)
    assert not runs and h.selection["deep"]["won"] and h.chosen["epochs"] == first.chosen["epochs"]
    for name, (a, b) in whole.params.items():
        assert np.array_equal(a, resumed.params[name][0]) and np.array_equal(b, resumed.params[name][1])
    monkeypatch.undo()
    monkeypatch.setattr(deep, "_paired_error", lambda *a: -np.inf)   # the deep tier loses: the skip adapter stays
    skip, lost = finetune(bb, x, y, config, checkpoint_dir=tmp_path / "lost")
    assert lost.selection["deep"]["considered"] and not lost.selection["deep"]["won"]
    monkeypatch.setattr(deep, "cross_validate", lambda *a, **k: runs.append(1))
    again, h = finetune(bb, x, y, config, checkpoint_dir=tmp_path / "lost", resume=True)
    assert not runs and h.selection["deep"] == lost.selection["deep"] and type(again).__name__ == "Adapter"
    assert np.array_equal(again.flat, skip.flat)
    monkeypatch.undo()   # a deep tier that could not run is checked again on resume (its budget may differ)
    monkeypatch.setattr(deep, "projected_seconds", lambda *a: 1e9)
    kept, over = finetune(bb, x, y, config, checkpoint_dir=tmp_path / "over")
    assert "unavailable" in over.selection["deep"] and type(kept).__name__ == "Adapter"
    monkeypatch.undo()
    resumed, h = finetune(bb, x, y, config, checkpoint_dir=tmp_path / "over", resume=True)
    assert h.selection["deep"]["won"] and type(resumed).__name__ == "DeepAdapter"


def test_cli_reports_a_deep_fine_tune(bn_bundle, tmp_path, capsys):
    """The text report of a fine-tune whose adapter is deep: its cross-validation has no skip "adapter" entry."""
    from edgelora.cli import main
    x, y = samples()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    args = ["finetune", str(bn_bundle), "--data", str(tmp_path / "d.npz"), "--epochs", "3", "--cv-folds", "2"]
    assert main(args + ["--out", str(tmp_path / "deep"), "--form", "deep"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "saved" in out and "fine-tuned vs" in out and "cross-validated (the deep tier: at least 100" in out, out
