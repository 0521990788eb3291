"""Deploy an adapter as plain ONNX: backbone + skip adapters (+ input standardisation) in one graph.

`merge` bakes one adapter's weights in. `lora_model` instead makes the adapter weights graph inputs
that default to "no adapter", and `export_ort_adapter` writes each adapter in onnxruntime's own LoRA
adapter format (`.onnx_adapter`), so an app switches adapters per run with
`RunOptions.add_active_adapter` (onnxruntime >= 1.20) and no edgelora present. Both graphs compute,
with taps t_k of the backbone and its base output y0 (lora.py):

    y = (concat_k(t_k @ A_k) @ B) * s + y0 + bias

and output only y, under the backbone's base output name. The manifest's `preprocess` (x - mean) / std
is baked in front of the graph, so the app feeds raw inputs, as to `edgelora.Predictor`.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import load_external_data_for_model

from ..core.lora import output_bias, tap_A
from ..files.adapter import Adapter, load_adapter
from ..files.bundle import Manifest, load_manifest, read_external, read_model, verify_bundle
from ..files.deep_adapter import DeepAdapter
from ..files.fileio import PathLike, atomic_write, write_file
from ..files.recalibration import recalibrated
from ..files.tap_stats import view
from ..files.outputs import check_target, file_kind
from .adapter_nodes import adapter_forward
from .deep_merge import deep_model, set_normalization as _set_normalization
from .onnx_utils import conservative, rename_value, serialize, unique_name

LORA_PREFIX = "lora."          # graph input names: lora.A.<tap> (d_k, r), lora.B (K r, C), lora.scale (), lora.bias (C,)
MERGED_KIND = file_kind("ONNX model written by edgelora merge", lambda head: b"edgelora.graphs.merge" in head)
ORT_ADAPTER_KIND = file_kind("onnxruntime LoRA adapter file", lambda head: head[4:8] == b"TORT")  # flatbuffer id


def merge(bundle_dir: PathLike, adapter: Adapter | PathLike, out_path: PathLike, bake_preprocess: bool = True, *,
          overwrite: bool = False) -> Path:
    """Write one ONNX model computing backbone + `adapter`; its single output has the backbone's base
    output name (e.g. `logits`). Refuses an adapter of another backbone, leaving no file behind."""
    check_target(out_path, MERGED_KIND, overwrite=overwrite)  # refuse before the work, not after
    manifest, adapter = _load(bundle_dir, adapter)
    manifest = recalibrated(manifest, adapter.config.recalibration)   # the statistics it was trained with
    if isinstance(adapter, DeepAdapter):  # LoRA inside the backbone's layers: W + s B A (deep_merge.py)
        proto = deep_model(bundle_dir, manifest, adapter)
        if bake_preprocess:
            _standardize(proto.graph, manifest, f"bundle {bundle_dir}")
        _describe(proto, manifest, adapter, bake_preprocess)
        atomic_write(_out(out_path, MERGED_KIND, overwrite), serialize(conservative(proto)))
        return Path(out_path)
    params = _params(adapter, manifest)
    manifest = view(manifest, adapter.config.tap_statistics)   # the tap statistics it reads
    proto = _build(bundle_dir, manifest, {k: numpy_helper.from_array(v, k) for k, v in params.items()}, bake_preprocess)
    _describe(proto, manifest, adapter, bake_preprocess)
    atomic_write(_out(out_path, MERGED_KIND, overwrite), serialize(conservative(proto)))
    return Path(out_path)


def lora_model(bundle_dir: PathLike, out_path: PathLike, bake_preprocess: bool = True, *,
               overwrite: bool = False) -> Path:
    """Write backbone + skip adapters whose weights are graph inputs (`lora.*`, any rank r) with
    defaults that leave the base output unchanged; feed them, or activate an `.onnx_adapter`."""
    check_target(out_path, MERGED_KIND, overwrite=overwrite)
    manifest = load_manifest(bundle_dir)  # _build checks the files
    c = manifest.num_outputs
    defaults = {f"{LORA_PREFIX}A.{t.name}": np.zeros((t.width, 1), np.float32) for t in manifest.taps}
    defaults.update({f"{LORA_PREFIX}B": np.zeros((len(manifest.taps), c), np.float32),
                     f"{LORA_PREFIX}scale": np.ones((), np.float32), f"{LORA_PREFIX}bias": np.zeros(c, np.float32)})
    proto = _build(bundle_dir, manifest, {k: numpy_helper.from_array(v, k) for k, v in defaults.items()},
                   bake_preprocess)
    dims = {f"{LORA_PREFIX}A.{t.name}": [t.width, "r"] for t in manifest.taps}
    dims.update({f"{LORA_PREFIX}B": ["taps_x_r", c], f"{LORA_PREFIX}scale": [], f"{LORA_PREFIX}bias": [c]})
    proto.graph.input.extend(helper.make_tensor_value_info(k, TensorProto.FLOAT, d) for k, d in dims.items())
    _describe(proto, manifest, None, bake_preprocess)
    atomic_write(_out(out_path, MERGED_KIND, overwrite), serialize(conservative(proto)))
    return Path(out_path)


def adapter_inputs(bundle_dir: PathLike, adapter: Adapter | PathLike) -> dict[str, np.ndarray]:
    """The `lora.*` feeds of `lora_model` for one adapter (taps it does not cover get zero weights)."""
    manifest, adapter = _load(bundle_dir, adapter, shared_graph=True)
    return _params(adapter, manifest)


def export_ort_adapter(bundle_dir: PathLike, adapter: Adapter | PathLike, out_path: PathLike, *,
                       overwrite: bool = False) -> Path:
    """Write `adapter` as an onnxruntime LoRA adapter file (`.onnx_adapter`) for `lora_model`'s graph."""
    import onnxruntime as ort
    check_target(out_path, ORT_ADAPTER_KIND, overwrite=overwrite)
    manifest, adapter = _load(bundle_dir, adapter, shared_graph=True)
    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(1)
    fmt.set_model_version(1)
    values = {k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v)) for k, v in _params(adapter, manifest).items()}
    fmt.set_parameters(values)
    out = _out(out_path, ORT_ADAPTER_KIND, overwrite)
    with tempfile.TemporaryDirectory(prefix="edgelora-adapter-") as scratch:  # onnxruntime writes by path
        fmt.export_adapter(str(Path(scratch) / "adapter"))
        atomic_write(out, (Path(scratch) / "adapter").read_bytes())  # small; synced and swapped in
    return out


def _load(bundle_dir: PathLike, adapter, shared_graph: bool = False) -> tuple[Manifest, Adapter | DeepAdapter]:
    """The bundle's (lab) manifest and the checked adapter. shared_graph: for `lora_model`'s graph, whose
    statistics are the lab's: an adapter trained on re-calibrated statistics is refused."""
    manifest = verify_bundle(bundle_dir)
    where = "adapter"
    if not isinstance(adapter, (Adapter, DeepAdapter)):
        where = f"adapter {adapter}"
        adapter = load_adapter(adapter, manifest)
    adapter.check_backbone(manifest, where)
    if shared_graph and getattr(adapter.config, "recalibration", None) is not None:
        raise ValueError(f"{where} was trained on re-calibrated normalisation statistics (its config's "
                         f"`recalibration`, kind {adapter.config.recalibration.kind!r}); lora_model's graph keeps "
                         f"the lab's: deploy it with merge (one ONNX model with its statistics baked in)")
    if shared_graph and getattr(adapter.config, "tap_statistics", ()):
        raise ValueError(f"{where} reads the tap statistics {list(adapter.config.tap_statistics)} (its config's "
                         f"`tap_statistics`); lora_model's graph feeds the bundle's own taps only: deploy it with "
                         f"merge (one ONNX model)")
    return manifest, adapter


def _params(adapter: Adapter, manifest: Manifest) -> dict[str, np.ndarray]:
    """lora.A.<tap> (d_k, r) for every backbone tap, lora.B (K r, C), lora.scale, lora.bias (float32)."""
    if isinstance(adapter, DeepAdapter):
        raise ValueError("a deep adapter changes the backbone's own weights: the `lora.*` inputs and .onnx_adapter "
                         "files carry skip adapters only; deploy it with `merge` (plain ONNX)")
    c, p, lay = adapter.config, adapter.params, adapter.config.layout  # taps == manifest.taps (check_backbone)
    out = {f"{LORA_PREFIX}A.{name}": np.ascontiguousarray(tap_A(p, lay, k), np.float32)
           for k, name in enumerate(c.target_taps)}
    out[f"{LORA_PREFIX}B"] = np.ascontiguousarray(p["B"], np.float32)
    out[f"{LORA_PREFIX}scale"] = np.asarray(c.scale, np.float32)
    out[f"{LORA_PREFIX}bias"] = np.ascontiguousarray(output_bias(p, lay), np.float32)
    return out


def _build(bundle_dir: PathLike, manifest: Manifest, weights: dict[str, onnx.TensorProto],
           bake_preprocess: bool) -> onnx.ModelProto:
    """The backbone graph with the adapter nodes appended and only the adapted output left."""
    proto = _backbone(bundle_dir, manifest)
    g = proto.graph
    _set_normalization(g, manifest)
    if bake_preprocess:
        _standardize(g, manifest, f"bundle {bundle_dir}")
    name, y0 = manifest.output.name, unique_name(g, f"base_{manifest.output.name}")
    rename_value(g, name, y0)          # the adapted output takes over the base output's name
    g.initializer.extend(weights.values())
    adapter_forward(_namer(g, name), y0, [(t.name, t.output, f"{LORA_PREFIX}A.{t.name}") for t in manifest.taps],
                    f"{LORA_PREFIX}B", lambda: f"{LORA_PREFIX}scale", f"{LORA_PREFIX}bias")
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", manifest.num_outputs]))
    return proto


def _namer(g: onnx.GraphProto, out: str):
    """adapter_nodes' `op` for a merged graph: nodes appended to `g`, values named `lora_*` (unique in `g`),
    the last one `out` (the base output's name)."""
    nodes = {"h": "lora_concat", "hB": "lora_matmul_B", "delta": "lora_scale", "y": "lora_add_base",
             "out": "lora_add_bias"}

    def op(op_type: str, inputs: list[str], role: str, **attrs) -> str:
        value = out if role == "out" else unique_name(g, f"lora_{role}")
        node = f"{value}_matmul" if role.startswith("h.") else nodes[role]
        g.node.append(helper.make_node(op_type, inputs, [value], name=node, **attrs))
        return value
    return op


def _backbone(bundle_dir: PathLike, manifest: Manifest) -> onnx.ModelProto:
    """The backbone as its digests vouch for it: the ONNX bytes checked against the fingerprint, and each
    external-data file checked and loaded from those bytes (never from a path onnx resolves itself)."""
    blob = read_model(bundle_dir, manifest)
    external = read_external(bundle_dir, manifest, blob)
    try:
        proto = onnx.load_from_string(blob)
        if external:
            with tempfile.TemporaryDirectory(prefix="edgelora-merge-") as scratch:
                for name, data in external.items():
                    write_file(Path(scratch) / name, data)
                load_external_data_for_model(proto, scratch)
    except Exception as e:  # onnx raises DecodeError, ValidationError, OSError for a model it cannot read
        raise ValueError(f"bundle {bundle_dir}: onnx cannot read {manifest.model_file} ({type(e).__name__}: {e}); "
                         f"re-export the bundle") from None
    return proto


def _standardize(g: onnx.GraphProto, manifest: Manifest, where: str) -> None:
    """(x - mean) / std in float32 in front of the graph, as Backbone does before running it."""
    both = sorted(set(manifest.preprocess) & {o.name for o in g.output})
    if both:  # its raw and its standardised values would need the same name
        raise ValueError(f"{where}: expected the standardised inputs {sorted(manifest.preprocess)} to be graph "
                         f"inputs only, found {both} among the graph outputs too; re-export the bundle")
    dtypes = {i.name: i.dtype for i in manifest.inputs}
    nodes = []
    for name, pre in manifest.preprocess.items():
        raw = unique_name(g, f"{name}_raw_to_standardized")
        for node in g.node:
            node.input[:] = [raw if i == name else i for i in node.input]
        mean = numpy_helper.from_array(np.asarray(pre.mean, np.float32), unique_name(g, f"{name}_mean"))
        std = numpy_helper.from_array(np.asarray(pre.std, np.float32), unique_name(g, f"{name}_std"))
        g.initializer.extend([mean, std])
        x = name
        if dtypes[name] != "float32":
            nodes.append(helper.make_node("Cast", [x], [f"{raw}_f32"], to=TensorProto.FLOAT, name=f"{raw}_cast_in"))
            x = f"{raw}_f32"
        final = raw if dtypes[name] == "float32" else f"{raw}_std"
        nodes += [helper.make_node("Sub", [x, mean.name], [f"{raw}_centered"], name=f"{raw}_sub"),
                  helper.make_node("Div", [f"{raw}_centered", std.name], [final], name=f"{raw}_div")]
        if dtypes[name] != "float32":
            to = helper.np_dtype_to_tensor_dtype(np.dtype(dtypes[name]))
            nodes.append(helper.make_node("Cast", [final], [raw], to=to, name=f"{raw}_cast_out"))
    for node in reversed(nodes):  # nodes must stay in topological order: these come first
        g.node.insert(0, node)


def _describe(proto: onnx.ModelProto, manifest: Manifest, adapter: Adapter | DeepAdapter | None, baked: bool) -> None:
    rc = adapter.config.recalibration if adapter is not None else None
    meta = {"edgelora.backbone_fingerprint": manifest.identity,
            "edgelora.preprocess": "baked into the graph (feed raw inputs)" if baked or not manifest.preprocess
            else "NOT baked: feed (x - mean) / std with the bundle manifest's `preprocess`" +
            (" as re-calibrated by the adapter's `recalibration`" if rc is not None and rc.preprocess else "")}
    if adapter is not None:
        meta["edgelora.adapter_weights_sha256"] = adapter.config.weights_sha256
        if rc is not None:
            meta["edgelora.recalibration"] = f"{rc.kind}: statistics re-estimated on {rc.samples} samples, baked in"
    helper.set_model_props(proto, meta)
    proto.producer_name = "edgelora.graphs.merge"


def _out(out_path: PathLike, kind, overwrite: bool) -> Path:
    out = check_target(out_path, kind, overwrite=overwrite)
    if out.is_dir():  # a symlink to a folder
        raise ValueError(f"output path {out} is a folder; expected a file path such as {out / 'model.onnx'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out
