"""edgelora: on-device Skip2-LoRA fine-tuning over a frozen ONNX backbone (numpy + onnxruntime)."""
from .adapter import Adapter, AdapterConfig, load_adapter
from .backbone import Backbone
from .bundle import Manifest, load_manifest
from .cache import SkipCache
from .predict import Predictor
from .train import History, TrainConfig, finetune

__version__ = "0.1.0"
__all__ = ["Adapter", "AdapterConfig", "Backbone", "History", "Manifest", "Predictor", "SkipCache", "TrainConfig",
           "finetune", "load_adapter", "load_manifest", "__version__"]
