"""PNG plots (matplotlib, Agg): the training curve and the perplexity comparison with baselines."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def training_curve(path: Path, curves: dict[str, list[dict]], baselines: dict[str, float]) -> Path:
    """Validation perplexity per step for each model, with baselines as horizontal lines."""
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for name, history in curves.items():
        ax.plot([h["step"] for h in history], [h["val_ppl"] for h in history], marker="o", ms=3, label=name)
    for i, (name, value) in enumerate(baselines.items()):
        ax.axhline(value, ls="--", lw=1, color=f"C{i + len(curves)}", label=f"{name} {value:.1f}")
    ax.set(xlabel="step", ylabel="validation perplexity", yscale="log", title="Distillation: validation perplexity")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def perplexity_bars(path: Path, values: dict[str, float], title: str) -> Path:
    """Bar chart of test perplexity per model (log scale), value printed on each bar."""
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=120)
    names = list(values)
    bars = ax.bar(names, [values[n] for n in names], color=[f"C{i}" for i in range(len(names))])
    for bar, name in zip(bars, names):
        ax.annotate(f"{values[name]:.1f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set(ylabel="test perplexity (log)", yscale="log", title=title)
    ax.tick_params(axis="x", labelrotation=30)
    ax.grid(alpha=0.3, axis="y", which="both")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
