"""What a user would otherwise run on the shift protocols: PyTorch FT-All and PEFT LoRA, written as users write
them. The lab's model (shift_models.load) on the lab's standardisation, all labelled samples, no split,
Adam, `model.train()` every epoch so batch-norm statistics follow the device's data. Imports torch (and
peft): run only in a torch worker process."""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import shift_models

FT_ALL = {"lr": 1e-3, "batch_size": 20, "epochs": 40}
# PEFT's LoRA as its docs configure it: r 8, lora_alpha 16, every Conv/Linear layer; the optimiser as for
# FT-All but a learning rate of 5e-3 (PEFT's image-classification example; LoRA's B starts at zero)
PEFT_LORA = {"r": 8, "lora_alpha": 16, "lr": 5e-3, "batch_size": 20, "epochs": 40}
LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


def with_peft(model: nn.Module, r: int, alpha: int) -> nn.Module:
    """`model` wrapped by peft's LoRA on every Conv/Linear layer (base weights frozen by peft)."""
    from peft import LoraConfig, get_peft_model
    targets = [name for name, m in model.named_modules() if isinstance(m, LAYERS)]
    return get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0))


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, settings: dict, seed: int) -> float:
    """The user's loop; returns its seconds (from raw arrays to trained weights)."""
    t0 = time.perf_counter()
    xt, yt = torch.from_numpy(np.ascontiguousarray(x, np.float32)), torch.from_numpy(np.asarray(y, np.int64))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=settings["lr"])
    gen = torch.Generator().manual_seed(seed)
    bs = settings["batch_size"]
    for _ in range(settings["epochs"]):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(perm), bs):
            idx = perm[i:i + bs]
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return time.perf_counter() - t0


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy in eval mode."""
    model.eval()
    with torch.no_grad():
        return float((model(torch.from_numpy(np.ascontiguousarray(x, np.float32))).argmax(1).numpy() == y).mean())


def run(method: str, folder: str, data: dict, idx: np.ndarray, seed: int) -> dict:
    """One fine-tune of `method` (torch-ft-all | peft-lora) on pool samples `idx`, tested on the test set."""
    torch.manual_seed(seed)
    model = shift_models.load(folder)
    settings = FT_ALL if method == "torch-ft-all" else PEFT_LORA
    if method == "peft-lora":
        model = with_peft(model, settings["r"], settings["lora_alpha"])
    elif method != "torch-ft-all":
        raise ValueError(f"unknown torch method {method!r}; expected torch-ft-all or peft-lora")
    norm = lambda a: (a - data["mean"]) / data["std"]      # noqa: E731 (the lab's standardisation)
    t0, c0 = time.perf_counter(), time.process_time()
    x = norm(data["x_pool"][idx])
    seconds = time.perf_counter() - t0 + train(model, x, data["y_pool"][idx], settings, seed)
    cpu = time.process_time() - c0
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"seconds": seconds, "cpu_seconds": cpu, "accuracy": accuracy(model, norm(data["x_te"]), data["y_te"]),
            "trainable_params": int(trainable), "settings": settings}
