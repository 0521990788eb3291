"""Each model family end to end: export -> Backbone -> fine-tune a few epochs -> predict (+ merge)."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")

from edgelora import Backbone, Predictor, TrainConfig, finetune  # noqa: E402
from edgelora.graphs.merge import merge  # noqa: E402
from edgelora_export import export_model  # noqa: E402
from edgelora_export.models import CNN1d, CNN2d, MLP, TransformerClassifier  # noqa: E402

CONFIG = TrainConfig(epochs=8, batch_size=16, lr=1e-2, weight_decay=0.0, val_fraction=0.0, form="skip")  # the skip
# adapters over each family's taps (the deep tier has its own tests: test_deep.py)


def _task(shape, n=240, classes=3, seed=0):
    """A shifted task the frozen (random) backbone does not solve: class = sign pattern of a hidden direction."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *shape)).astype(np.float32)
    y = rng.integers(0, classes, n)
    x += (np.eye(classes, dtype=np.float32)[y] @ rng.standard_normal((classes, int(np.prod(shape))))
          .astype(np.float32)).reshape(n, *shape)
    return x, y


def _end_to_end(tmp_path, model, x, y, inputs=None, **kw):
    torch.manual_seed(0)
    example = tuple(torch.from_numpy(v[:4]) for v in inputs.values()) if inputs else torch.from_numpy(x[:4])
    manifest = export_model(model.eval(), example, tmp_path / "bundle", **kw)
    backbone = Backbone(tmp_path / "bundle")
    data = inputs if inputs else x
    tr = {k: v[:160] for k, v in data.items()} if inputs else data[:160]
    te = {k: v[160:] for k, v in data.items()} if inputs else data[160:]
    base = Predictor(backbone).evaluate(te, y[160:])["accuracy"]
    adapter, history = finetune(backbone, tr, y[:160], CONFIG)
    tuned = Predictor(backbone, adapter)
    assert history.epochs[-1]["train_loss"] < history.epochs[0]["train_loss"]
    acc = tuned.evaluate(te, y[160:])["accuracy"]
    assert acc >= 0.6 and acc > base, (base, acc)
    assert tuned.predict(te).shape == (len(y) - 160,)
    merged = merge(tmp_path / "bundle", adapter, tmp_path / "merged.onnx")
    session = ort.InferenceSession(str(merged), providers=["CPUExecutionProvider"])
    feed = te if inputs else {manifest.inputs[0].name: te}
    assert np.abs(session.run(None, feed)[0] - tuned.outputs(te)).max() <= 1e-5
    return manifest


def test_mlp(tmp_path):
    x, y = _task((20,))
    m = _end_to_end(tmp_path, MLP(20, 3, hidden=(32, 32)), x, y)
    assert m.tap_widths == (20, 32, 32)


def test_cnn1d(tmp_path):
    x, y = _task((32, 3))
    m = _end_to_end(tmp_path, CNN1d(3, 3, width=8), x, y)
    assert [(t.name, t.pooling) for t in m.taps] == [("conv1.input", "global_avg"), ("conv2.input", "global_avg"),
                                                     ("head.input", "none")]


def test_cnn2d(tmp_path):
    x, y = _task((16, 12))
    m = _end_to_end(tmp_path, CNN2d(3, width=4), x, y)
    assert [t.pooling for t in m.taps] == ["global_avg"] * 3 + ["none"]


def test_transformer_encoder_with_masked_mean(tmp_path):
    x, y = _task((10, 6))
    mask = np.ones((len(x), 10), np.int64)
    mask[::3, 6:] = 0                               # padded sequences
    x[mask == 0] = 100.0                            # padding content must not leak into the pooled taps
    m = _end_to_end(tmp_path, TransformerClassifier(6, 3, d_model=16, heads=2, layers=1), x, y,
                    inputs={"x": x, "mask": mask}, attention_mask="mask")
    assert {t.pooling for t in m.taps[:-1]} == {"masked_mean"} and m.taps[-1].pooling == "none"
    assert "encoder.layers.0.self_attn.input" in m.tap_names
    backbone, clean = Backbone(tmp_path / "bundle"), x.copy()
    clean[mask == 0] = 0.0
    y0, taps = backbone.features({"x": x, "mask": mask})
    y0c, tapsc = backbone.features({"x": clean, "mask": mask})
    np.testing.assert_allclose(taps, tapsc, atol=1e-4)
    np.testing.assert_allclose(y0, y0c, atol=1e-4)


def test_huggingface_bert_encoder(tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (it is in the test "
                                                              "extra: ./run test, or pip install -e '.[test]')")
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16, num_labels=3)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).eval()
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 50, (240, 12)).astype(np.int64)
    y = (ids[:, 0] % 3).astype(np.int64)
    mask = np.ones_like(ids)
    mask[::2, 8:] = 0
    m = _end_to_end(tmp_path, model, None, y, inputs={"input_ids": ids, "attention_mask": mask},
                    attention_mask="attention_mask")
    assert any(t.pooling == "masked_mean" for t in m.taps)
