"""edgelora: on-device Skip2-LoRA fine-tuning over a frozen ONNX backbone (numpy + onnxruntime)."""
from .adapter import Adapter, AdapterConfig, load_adapter
from .backbone import Backbone
from .bundle import Manifest, load_manifest
from .cache import SkipCache
from .personalize import PersonalizeConfig, personalize
from .predict import Predictor
from .serve import AdapterServer, ServeConfig
from .store import AdapterStore
from .train import History, TrainConfig, finetune

__version__ = "0.1.0"
__all__ = ["Adapter", "AdapterConfig", "AdapterServer", "AdapterStore", "Backbone", "History", "Manifest",
           "PersonalizeConfig", "Predictor", "ServeConfig", "SkipCache", "TrainConfig", "finetune", "load_adapter",
           "load_manifest", "personalize", "__version__"]
