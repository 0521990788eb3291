"""PNG plots of a results dict: time breakdown per method, accuracy vs fine-tune time, cost vs N and rank."""
from __future__ import annotations

from pathlib import Path

from .report import PARTS

COLORS = {"backbone": "#8c564b", "forward": "#1f77b4", "backward": "#d62728", "update": "#2ca02c",
          "eval": "#9467bd", "other": "#7f7f7f"}


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def breakdown(results: dict, path: Path) -> None:
    """Stacked bars of where each method's fine-tune time goes: seconds, and shares of the total."""
    plt = _plt()
    m = results["methods"]
    names = [r["name"] for r in m.values()]
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.45 * len(names) + 1.8), sharey=True)
    for ax, share in zip(axes, (False, True)):
        left = [0.0] * len(names)
        for part in PARTS:
            widths = [r["breakdown"].get(part, 0.0) / (sum(r["breakdown"].values()) / 100 if share else 1.0)
                      for r in m.values()]
            ax.barh(names, widths, left=left, color=COLORS[part], label=part)
            left = [a + b for a, b in zip(left, widths)]
        if not share:
            for i, r in enumerate(m.values()):
                ax.text(r["seconds_mean"] * 1.01, i, f"{r['seconds_mean']:.3f} s", va="center", fontsize=8)
        ax.set_xlabel("share of the fine-tune time (%)" if share else "fine-tune time (s)")
    axes[0].invert_yaxis()
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(f"{results['protocol']}: where the fine-tune time goes (1 thread, mean per fine-tune)")
    _save(plt, fig, path)


def accuracy_vs_time(results: dict, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results["methods"].values():
        ax.errorbar(r["seconds_mean"], 100 * r["accuracy_mean"], xerr=r["seconds_std"],
                    yerr=100 * r["accuracy_std"], fmt="o", capsize=3)
        ax.annotate(r["name"], (r["seconds_mean"], 100 * r["accuracy_mean"]), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    before = results.get("before_accuracy")
    if before is not None:
        ax.axhline(100 * before, color="gray", ls=":", label=f"before fine-tuning ({100 * before:.1f} %)")
        ax.legend(fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("fine-tune time (s, log scale)")
    ax.set_ylabel("target test accuracy (%)")
    ax.set_title(f"{results['protocol']}: accuracy vs fine-tune time (mean ± std over seeds)")
    _save(plt, fig, path)


def cost_vs_n(scaling: dict, path: Path) -> None:
    """Fine-tune time and peak RSS vs N per method; cached epoch cost vs N with its fit; time vs rank."""
    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.3))
    methods = list(dict.fromkeys(p["method"] for p in scaling["points"]))
    for m in methods:
        pts = sorted((p for p in scaling["points"] if p["method"] == m), key=lambda p: p["n"])
        n = [p["n"] for p in pts]
        axes[0].plot(n, [p["seconds"] for p in pts], "o-", label=m)
        axes[1].plot(n, [p["peak_rss_mb"] for p in pts], "o-", label=m)
        if m == "skip2-lora":
            axes[2].plot(n, [1e3 * p["epoch_seconds"] for p in pts], "o", label="measured")
            fit = scaling.get("fit")
            if fit:
                axes[2].plot(n, [1e3 * (fit["intercept"] + fit["slope"] * v) for v in n], "-",
                             label=f"a + b N, R² = {fit['r2']:.4f}")
    axes[0].set(xscale="log", yscale="log", xlabel="N (fine-tune samples)", ylabel="fine-tune time (s)",
                title="time vs N")
    axes[1].set(xscale="log", xlabel="N", ylabel="peak RSS (MB)", title="process peak RSS vs N")
    axes[2].set(xlabel="N", ylabel="ms per cached epoch", title="Skip2-LoRA: cached epoch vs N")
    for m in dict.fromkeys(p["method"] for p in scaling["ranks"]):
        pts = [p for p in scaling["ranks"] if p["method"] == m]
        axes[3].plot([p["rank"] for p in pts], [p["seconds"] for p in pts], "o-", label=m)
    axes[3].set(xscale="log", yscale="log", xlabel="rank r", ylabel="fine-tune time (s)", title="time vs rank")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.suptitle(f"cost vs N and rank ({scaling['task']}, 1 thread)")
    _save(plt, fig, path)


def write_all(results: dict, out: Path) -> list[str]:
    files = [out / "breakdown.png", out / "accuracy_vs_time.png"]
    breakdown(results, files[0])
    accuracy_vs_time(results, files[1])
    if results.get("scaling"):
        files.append(out / "cost_vs_n.png")
        cost_vs_n(results["scaling"], files[-1])
    return [str(f) for f in files]
