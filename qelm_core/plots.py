"""PNG plots (matplotlib, Agg): the training curve, the perplexity comparison with baselines, bench samples/s."""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from qelm_core.io import atomic_write_bytes  # noqa: E402


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


def samples_plot(path: Path, cells: list[dict]) -> Path:
    """samples/s vs n (log scale): one colour per engine, one line style per batch size."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    batches = sorted({c["batch"] for c in cells})
    for i, engine in enumerate(dict.fromkeys(c["engine"] for c in cells)):
        for j, batch in enumerate(batches):
            pts = [(c["n"], c["samples_per_s"]) for c in cells
                   if c["engine"] == engine and c["batch"] == batch and c.get("samples_per_s")]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, color=f"C{i}", ls=("-", "--", ":", "-.")[j % 4],
                        label=f"{engine}, batch {batch}")
    ax.set_xticks(sorted({c["n"] for c in cells}))
    ax.set(xlabel="qubits n", ylabel="samples/s (fwd+bwd, log)", yscale="log",
           title="Circuit engines: training throughput (skipped cells omitted)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path
