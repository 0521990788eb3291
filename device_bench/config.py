"""What is measured: the methods, their shared fine-tuning recipe, and the targets they are judged by."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class BenchConfig:
    """One recipe for every method (same data, epochs, batch, split, rank); see README 'Recipe'."""
    epochs: int = 30                 # passes over the training split (datasets/README.md default)
    batch_size: int = 20             # samples per step (datasets/README.md default)
    rank: int = 4                    # r of every LoRA/Skip-LoRA adapter (edgelora's default)
    alpha: float = 8.0               # LoRA scale s = alpha / r = 2 (edgelora's default, lora_alpha = 2 r)
    val_fraction: float = 0.0        # 0: every method trains on all fine-tune samples, as users run it; > 0: the
                                     # same 'tail' validation split for every method, best epoch restored
    ft_lr: float = 1e-3              # FT-*: Adam, the pre-training optimiser (datasets/README.md)
    lora_lr: float = 3e-3            # LoRA-*/Skip*: AdamW, edgelora's default
    lora_weight_decay: float = 1.0   # decoupled decay of adapters (edgelora's default)
    skip_policy: str = "default"     # Skip*: "default" = `edgelora finetune` as shipped (cross-validated recipe,
                                     # epochs/batch above); "fixed" = exactly the recipe above, no selection

    def __post_init__(self):
        for name in ("epochs", "batch_size", "rank"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"`{name}` should be a positive integer, found {getattr(self, name)!r}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"`val_fraction` should be in [0, 1), found {self.val_fraction}")
        if self.skip_policy not in ("default", "fixed"):
            raise ValueError(f"`skip_policy` should be 'default' or 'fixed', found {self.skip_policy!r}")

    def to_dict(self) -> dict:
        return asdict(self)


# method id -> (display name, engine, what is trained)
METHODS = {
    "np-ft-all": ("FT-All", "numpy", "all weights, backprop through the backbone"),
    "np-ft-last": ("FT-Last", "numpy", "last layer; forward through the frozen layers every step"),
    "np-lora-all": ("LoRA-All", "numpy", "LoRA in every layer, backprop through the backbone"),
    "np-lora-last": ("LoRA-Last", "numpy", "LoRA in the last layer"),
    "skip-lora": ("Skip-LoRA", "edgelora", "skip adapters, backbone (onnxruntime) every step"),
    "skip2-lora": ("Skip2-LoRA", "edgelora", "skip adapters on the Skip-Cache"),
    "torch-ft-all": ("PyTorch FT-All", "torch", "all weights"),
    "torch-ft-last": ("PyTorch FT-Last", "torch", "last layer"),
    "torch-lora-all": ("PyTorch LoRA-All", "torch", "LoRA (plain, PEFT conventions) in every layer"),
    # optional peer, run only with `--ort-python` (its own virtual environment)
    "ort-ft-all": ("ORT-training FT-All", "ort-training", "all weights, onnxruntime-training 1.19.2"),
    "ort-ft-last": ("ORT-training FT-Last", "ort-training", "last layer, onnxruntime-training 1.19.2"),
}
SKIP2 = "skip2-lora"

# the numpy engine's layer modes per method (engine.MODES), given the number of weight layers L
def layer_modes(method: str, num_layers: int) -> list[str]:
    kind = method.split("-", 1)[1]
    table = {"ft-all": ["full"] * num_layers, "lora-all": ["lora"] * num_layers,
             "ft-last": ["frozen"] * (num_layers - 1) + ["full"], "lora-last": ["frozen"] * (num_layers - 1) + ["lora"]}
    if kind not in table:
        raise ValueError(f"no layer modes for method {method!r}; expected one of {sorted(table)}")
    return table[kind]


def check_methods(names: list[str]) -> list[str]:
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; expected some of {list(METHODS)}")
    return names


# (id, text, threshold) of the targets; evaluated by device_bench.report.targets
TARGETS = (
    ("skip2_vs_torch_ft_all", "Skip2-LoRA time <= 0.05 x PyTorch FT-All", 0.05),
    ("default_vs_torch_ft_all", "default fine-tune time (selection + refit + cache fill) <= 0.25 x PyTorch FT-All "
                                "(MLPs), <= 0.1 x (CNNs)", None),
    ("skip2_vs_torch_lora_all", "Skip2-LoRA time <= 0.05 x PyTorch LoRA-All", 0.05),
    ("skip2_vs_np_lora_all", "Skip2-LoRA takes >= 90 % less time than LoRA-All (numpy, same rank)", 0.90),
    ("skip2_acc_vs_torch_ft_all", "Skip2-LoRA accuracy >= PyTorch FT-All - 1 point", -1.0),
    ("skip2_harm", "fine-tuned below no fine-tuning for at most 1 task in 9 (users/folds, mean over seeds)", 1 / 9),
    ("cv_estimate", "cross-validated estimate within 5 points of test accuracy (mean over tasks)", 5.0),
    ("skip2_peak_rss", "Skip2-LoRA fine-tune process peak RSS <= 100 MB (fan)", 100.0),
    ("cached_epoch_linear", "cost of a cached epoch linear in N (R^2 >= 0.99)", 0.99),
)
