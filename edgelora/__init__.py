"""edgelora: on-device Skip2-LoRA fine-tuning over a frozen ONNX backbone (numpy + onnxruntime).

The package is layered; each layer imports only from the layers above it in this list:

    core      the adapter math, losses, optimisers, the training loop, cross-validation (numpy only)
    files     formats on disk: bundle manifest, adapter, checkpoint, data loaders, checked writes
    graphs    ONNX graph work: merged models, ORT adapter files, training kits, taps of an .onnx model
    runtime   onnxruntime: the backbone, the Skip-Cache, prediction, fine-tuning
    ops       operations over a device's life: sample and adapter stores, personalisation, serving
    cli, fleet   the `edgelora` command and Flower fleets

The names below are imported on first use, so `import edgelora` costs nothing and `edgelora.core`
works with numpy alone.
"""
import os
from importlib import import_module

# onnxruntime (1.32 on Linux, measured) writes a telemetry database under ~/.cache/Microsoft at every import
# unless this is set: a device runtime writes nothing outside its own folders (and spares the flash). Set before
# onnxruntime is imported; ORT_DISABLE_TELEMETRY=0 in the environment keeps onnxruntime's default.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"
_PUBLIC = {
    "Adapter": "files.adapter", "AdapterConfig": "files.adapter", "load_adapter": "files.adapter",
    "Manifest": "files.bundle", "load_manifest": "files.bundle",
    "Backbone": "runtime.backbone", "SkipCache": "runtime.cache", "Predictor": "runtime.predict",
    "History": "runtime.train_config", "TrainConfig": "runtime.train_config", "finetune": "runtime.train",
    "AdapterStore": "ops.store", "PersonalizeConfig": "ops.personalize", "personalize": "ops.personalize",
    "AdapterServer": "ops.serve", "ServeConfig": "ops.serve",
}
__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'edgelora' has no attribute {name!r}")
    value = getattr(import_module(f".{_PUBLIC[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
