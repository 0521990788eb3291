"""The demo's figure: what the new scanner does, how fine-tuning went, and accuracy before/after.

Imports matplotlib (the `demo` extra); demo.py catches the ImportError and reports how to install it.
"""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..files.fileio import atomic_write  # noqa: E402

GREY, RED, GREEN, BLUE = "#8c8c8c", "#d62728", "#2ca02c", "#1f77b4"


def plot(r: dict, examples: tuple[np.ndarray, np.ndarray], out: Path) -> Path:
    """Write the three-panel story to `out` (PNG, atomically) and return the path."""
    fig = plt.figure(figsize=(14, 4.8), dpi=110)
    grid = fig.add_gridspec(1, 3, width_ratios=[1.0, 1.35, 1.0], wspace=0.28, left=0.03, right=0.98, top=0.78,
                            bottom=0.12)
    _examples(fig, grid[0], *examples)
    _curve(fig.add_subplot(grid[1]), r)
    _bars(fig.add_subplot(grid[2]), r)
    a, t = r["accuracy"], r["seconds"]
    fig.suptitle(f"A new scanner breaks the digit classifier ({100 * a['lab']:.0f} % -> {100 * a['before']:.0f} %); "
                 f"on-device Skip2-LoRA brings it back to {100 * a['after']:.0f} %\n"
                 f"{r['samples']['finetune']} labelled scans, {t['cache_fill'] + t['train']:.2f} s of fine-tuning "
                 f"on {r['threads']} CPU thread{'s' if r['threads'] > 1 else ''}, peak memory {r['peak_rss_bytes'] / 2**20:.0f} MB, no PyTorch",
                 fontsize=12.5, fontweight="bold")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write(out, buf.getvalue())
    return out


def _examples(fig, cell, clean: np.ndarray, shifted: np.ndarray) -> None:
    """Two rows of the same test digits: as the lab scanner saw them, as the new scanner does."""
    n = len(clean)
    sub = cell.subgridspec(4, n, hspace=0.1, wspace=0.06, height_ratios=[0.6, 1, 1, 0.6])
    for row, (images, label) in enumerate(((clean, "lab scanner"), (shifted, "new scanner")), start=1):
        for j in range(n):
            ax = fig.add_subplot(sub[row, j])
            ax.imshow(images[j].reshape(8, 8), cmap="gray_r", vmin=0, vmax=16, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(label, fontsize=10)
            if row == 1 and j == n // 2:
                ax.set_title("What the device sees: the same digits", fontsize=11, loc="center", x=0.0)


def _curve(ax, r: dict) -> None:
    """Cross-validated accuracy of the chosen recipe after each epoch count tried; epoch 0 = no adapter."""
    epochs = [c["epoch"] for c in r["curve"]]
    acc = [100 * c["cv_accuracy"] for c in r["curve"]]
    cv, ch = r["cross_validation"], r["chosen"]
    ax.plot(epochs, acc, "o-", color=BLUE, lw=2,
            label=f"cross-validated accuracy ({cv['folds']} folds of the {r['samples']['train']} new scans)")
    kept = epochs.index(ch["epochs"])
    ax.plot([ch["epochs"]], [acc[kept]], "o", color=GREEN, ms=10, label=f"chosen: {ch['epochs']} epochs")
    ax.axhline(100 * r["accuracy"]["lab"], color=GREY, ls="--", lw=1.2, label="lab accuracy (clean test scans)")
    ax.annotate("pre-trained\nbackbone", (0, acc[0]), xytext=(8, -4), textcoords="offset points", fontsize=9,
                va="top")
    ax.set_xlabel("epochs of on-device fine-tuning")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_xlim(-1, max(epochs) + 1)
    ax.set_title(f"Fine-tuning on the device (r={ch['r']}, weight decay {ch['weight_decay']:g}):\n"
                 f"{r['recipes']} recipes x {cv['folds']} folds + refit in {r['seconds']['train']:.2f} s", fontsize=11)
    ax.legend(loc="lower right", fontsize=9, frameon=False)
    ax.grid(alpha=0.3)


def _bars(ax, r: dict) -> None:
    a = r["accuracy"]
    labels = ["lab scanner\n(clean)", "new scanner\nbefore", "new scanner\nafter Skip2-LoRA"]
    values = [100 * a["lab"], 100 * a["before"], 100 * a["after"]]
    bars = ax.bar(labels, values, color=[GREY, RED, GREEN], width=0.62)
    for bar, v in zip(bars, values):
        ax.text(bar.get_x() + bar.get_width() / 2, v + 1.5, f"{v:.1f} %", ha="center", fontsize=12,
                fontweight="bold")
    ax.set_ylim(0, 105)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"Accuracy on {r['samples']['test']} test digits", fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
