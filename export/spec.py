"""What `edgelora export MODEL` accepts: a `.pt2` torch.export program, or `package.module:factory`
(+ a state dict file), with an example input given as a shape, a .npy/.npz file or an array."""
from __future__ import annotations

import importlib
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from edgelora.files.bundle import Manifest
from edgelora.files.fileio import PathLike

from .torch_export import export_model, forward_parameters

TRAINING_ARG = {"aten.dropout.default": 2, "aten.feature_dropout.default": 2, "aten.alpha_dropout.default": 2,
                "aten.native_dropout.default": 2, "aten.batch_norm.default": 5, "aten.native_batch_norm.default": 5,
                "aten._native_batch_norm_legit_functional.default": 5}   # op -> index of its `train` argument


def export_from_spec(model_spec: str, out: PathLike, taps: str | Sequence[str] = "auto", example=None,
                     weights: PathLike | None = None, **options) -> Manifest:
    """Export a model named by `model_spec` to the bundle folder `out`; returns the written manifest.

    model_spec: "path/to/program.pt2" (torch.export.save; carries graph and weights) or
        "package.module:factory" (a callable returning an nn.Module; `weights` = a state-dict file).
    example: shape with the batch dim ("1,512", "8x128x6", (1, 512)) for one float32 input, a .npy /
        .npz file (.npz: arrays in file order, one per model input), an array/tensor or a tuple of them;
        None uses the example stored in the .pt2 program.
    options: passed to export.export_model (task, classes, preprocess, attention_mask, output, ...).
    """
    kinds, static = None, None
    if str(model_spec).endswith(".pt2"):
        if weights is not None:
            raise ValueError("`weights` is for package.module:factory models; a .pt2 program carries its own")
        model, kinds, stored, static = load_program(model_spec)
        example = stored if example is None else example
    elif re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", str(model_spec)):
        model = load_factory(model_spec, weights)
    else:
        raise ValueError(f"MODEL should be a .pt2 file or package.module:factory, found {model_spec!r}")
    if example is None:
        raise ValueError("an example input is needed: give its shape (e.g. 1,512) or a .npy/.npz file")
    check_example_arity(model, example, options.get("input_names"))
    example = parse_example(example)
    if static is not None:
        check_batch_free(model, example, f"{model_spec} was exported with a static batch of {static}")
    return export_model(model, example, out, taps, kinds=kinds, **options)


def load_program(path: PathLike) -> tuple[nn.Module, dict[str, str], tuple | None, int | None]:
    """(module with the original submodule names, {name: layer class}, stored example inputs, the static
    batch size or None) of a .pt2. A static batch (torch.export.export(net, (x,)) without dynamic_shapes)
    gets its input-shape check switched off; `check_batch_free` then tests that the graph allows it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"torch.export program not found: {path}")
    try:
        program = torch.export.load(str(path))
    except Exception as e:
        raise ValueError(f"{path} is not a torch.export program file ({e})") from None
    kinds = {}
    for node in program.graph.nodes:
        for module_path, cls in node.meta.get("nn_module_stack", {}).values():
            kinds[module_path] = str(getattr(cls, "__name__", cls)).rsplit(".", 1)[-1]
        i = TRAINING_ARG.get(str(node.target))
        if node.op == "call_function" and i is not None and len(node.args) > i and node.args[i] is True:
            raise ValueError(f"{path} was exported in training mode ({node.target} at node {node.name}): its "
                             f"dropout/batch-norm would make the backbone non-deterministic; call model.eval() "
                             f"before torch.export.export and save the program again")
    stored = program.example_inputs[0] if program.example_inputs else None
    user = set(program.graph_signature.user_inputs)
    batches = [n.meta["val"].shape[0] for n in program.graph.nodes if n.op == "placeholder" and n.name in user
               and isinstance(n.meta.get("val"), torch.Tensor) and n.meta["val"].ndim]   # SymInts are unhashable
    static = batches[0] if batches and all(isinstance(b, int) for b in batches) else None
    with warnings.catch_warnings():  # torch 2.13's own unflatten warns about its own deprecated LeafSpec
        warnings.filterwarnings("ignore", message=r".*LeafSpec.*deprecated", category=FutureWarning)
        module = torch.export.unflatten(program)
    if static is not None:
        module.check_input_constraints = False
    return module, kinds, stored, static


def check_batch_free(model: nn.Module, example, what: str) -> None:
    """Raise ValueError unless `model` gives every sample of a batch the output it gives that sample alone."""
    args = example if isinstance(example, tuple) else (example,)
    args = tuple(torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a for a in args)
    gen = torch.Generator().manual_seed(0)
    batch = tuple(torch.cat([a[:1], a[:1] + torch.randn(a[:1].shape, generator=gen) * (float(a.float().std()) or 1.0)])
                  if a.is_floating_point() else torch.cat([a[:1], a[:1]]) for a in args)
    fix = ("re-export it with a dynamic batch: torch.export.export(model, (x,), dynamic_shapes=({0: "
           "torch.export.Dim('batch')},)), or export package.module:factory instead")
    try:
        with torch.no_grad():
            together = model(*batch)
            alone = [model(*(a[i:i + 1] for a in batch)) for i in range(2)]
    except Exception as e:
        reason = " ".join(str(e).split("While executing")[0].split())[:160]
        raise ValueError(f"{what} and its graph depends on it ({type(e).__name__}: {reason}); {fix}") from None
    first = lambda y: y[0] if isinstance(y, (tuple, list)) else y  # noqa: E731
    if not all(torch.allclose(first(together)[i], first(alone[i])[0], rtol=1e-4, atol=1e-5) for i in range(2)):
        raise ValueError(f"{what}, and its output for a sample depends on the other samples of the batch; a "
                         f"backbone must compute each sample on its own (no batch statistics)")


def load_factory(spec: str, weights: PathLike | None = None) -> nn.Module:
    """Call `package.module:factory`; load a state dict into the model if `weights` is given. The module is
    looked up in the current folder first, as `python -m` does, then on the usual path."""
    module_name, attr = spec.split(":")
    here = os.getcwd()
    added = here not in sys.path
    if added:
        sys.path.insert(0, here)
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except ImportError as e:
        raise ValueError(f"cannot import `{module_name}` for {spec} ({e}); it is looked for in the current "
                         f"folder ({here}) and on PYTHONPATH") from None
    except AttributeError:
        raise ValueError(f"`{module_name}` has no attribute `{attr}` (from {spec})") from None
    finally:
        if added:
            sys.path.remove(here)
    model = factory()
    if not isinstance(model, nn.Module):
        raise TypeError(f"{spec} should return a torch.nn.Module, found {type(model).__name__}")
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}")
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"{path} is not a loadable state dict ({e})") from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(f"{path} does not fit {spec}: missing keys {result.missing_keys}, unexpected keys "
                             f"{result.unexpected_keys}")
    return model


def check_example_arity(model: nn.Module, example, input_names=None) -> None:
    """Refuse an .npz example with more arrays than the model's forward takes (e.g. one that also holds the
    labels), naming the arrays and the parameters, before anything is exported."""
    if not (isinstance(example, (str, Path)) and Path(example).suffix == ".npz" and Path(example).is_file()):
        return
    with np.load(example, allow_pickle=False) as data:
        arrays = list(data.files)
    params = forward_parameters(model)
    if input_names is None and params is not None and len(arrays) > len(params):
        raise ValueError(f"example {example} holds {len(arrays)} arrays {arrays}, but the model's forward takes "
                         f"{len(params)} input(s) {params}: keep only the model's inputs in the file, in "
                         f"forward's order")


def parse_example(example):
    """A shape string/tuple (float32 standard normal, seeded), a .npy/.npz path, or arrays as they are."""
    if isinstance(example, (str, Path)) and Path(example).suffix in (".npy", ".npz"):
        path = Path(example)
        if not path.is_file():
            raise FileNotFoundError(f"example file not found: {path}")
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as data:
            return tuple(data[k] for k in data.files)
    if isinstance(example, str):
        parts = re.split(r"[x,\s]+", example.strip().strip("()"))
        if not all(p.isdigit() and int(p) > 0 for p in parts if p):
            raise ValueError(f"example should be a shape like 1,512 or a .npy/.npz file, found {example!r}")
        example = tuple(int(p) for p in parts if p)
    if isinstance(example, tuple) and example and all(isinstance(d, int) for d in example):
        return torch.randn(example, generator=torch.Generator().manual_seed(0))
    return example
