"""The classification comparison chart: test accuracy per model and dataset, mean ± sd over seeds."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from qelm_core.io import atomic_write_bytes  # noqa: E402

BARS = (("teacher", "teacher"), ("quantum_exact", "quantum"), ("quantum_noisy", "quantum noisy"),
        ("mlp", "MLP"), ("logreg", "log. reg."), ("majority", "majority"))


def accuracy_bars(path: Path, result: dict) -> Path:
    import io

    names = list(result["datasets"])
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), dpi=110, squeeze=False)
    for ax, name in zip(axes[0], names):
        summary = result["datasets"][name]["summary"]
        rows = [(label, summary[k]) for k, label in BARS if k in summary]
        ax.bar([r[0] for r in rows], [r[1]["accuracy_mean"] for r in rows],
               yerr=[r[1]["accuracy_std"] for r in rows], capsize=3, color=[f"C{i}" for i in range(len(rows))])
        ax.set(title=f"{name}: test accuracy (mean ± sd over seeds)", ylim=(0, 1))
        ax.tick_params(axis="x", labelrotation=30)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
