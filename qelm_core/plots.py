"""Every PNG the project draws (matplotlib, Agg), each written by temp file + rename: the training curve,
the perplexity comparison with baselines, bench samples/s, classification accuracy, the sweep's Pareto figure."""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from qelm_core.io import atomic_write_bytes  # noqa: E402


def save_png(fig, path: Path) -> Path:
    """Render to memory, then temp file + rename: a killed stage never leaves a half-written PNG."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


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
    return save_png(fig, path)


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
    return save_png(fig, path)


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
    return save_png(fig, path)


ACCURACY_BARS = (("teacher", "teacher"), ("quantum_exact", "quantum"), ("quantum_noisy", "quantum noisy"),
        ("mlp", "MLP"), ("logreg", "log. reg."), ("majority", "majority"))


def accuracy_bars(path: Path, result: dict) -> Path:
    """Classification: test accuracy per model and dataset, mean ± sd over seeds."""
    names = list(result["datasets"])
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), dpi=110, squeeze=False)
    for ax, name in zip(axes[0], names):
        summary = result["datasets"][name]["summary"]
        rows = [(label, summary[k]) for k, label in ACCURACY_BARS if k in summary]
        ax.bar([r[0] for r in rows], [r[1]["accuracy_mean"] for r in rows],
               yerr=[r[1]["accuracy_std"] for r in rows], capsize=3, color=[f"C{i}" for i in range(len(rows))])
        ax.set(title=f"{name}: test accuracy (mean ± sd over seeds)", ylim=(0, 1))
        ax.tick_params(axis="x", labelrotation=30)
        ax.grid(alpha=0.3, axis="y")
    return save_png(fig, Path(path))


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(params, ppl) points no other point beats on both (fewer-or-equal parameters and lower perplexity)."""
    front, best = [], float("inf")
    for x, y in sorted(points):
        if y < best:
            front.append((x, y))
            best = y
    return front


def pareto_plot(path: Path, summary: list[dict], baselines=("unigram", "teacher")) -> Path:
    """Full-vocabulary test perplexity (ppl_full, comparable across vocabulary sizes) against trainable
    parameters and against bytes on disk: quantum vs classical, every n_qubits in the same panel."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), dpi=120)
    for ax, x_key, x_label in zip(axes, ("params", "bytes"), ("trainable parameters", "bytes on disk (safetensors)")):
        for i, (kind, marker) in enumerate((("quantum", "o"), ("classical", "s"))):
            points = {}  # key -> (row, layers): a classical twin shared by several quantum sizes is drawn once
            for r in summary:
                if r["kind"] == kind:
                    key = (r["n_qubits"], r["params"], r["alpha"]) if kind == "classical" else id(r)
                    points.setdefault(key, (r, []))[1].append(str(r["layers"]))
            pts = [r for r, _ in points.values()]
            if not pts:
                continue
            ax.errorbar([r[x_key] for r in pts], [r["ppl_full_mean"] for r in pts], yerr=[r["ppl_full_std"] for r in pts],
                        fmt=marker, color=f"C{i}", capsize=3, label=f"{kind} (mean ± sd over seeds)")
            for r, layers in points.values():
                rows = (f" K{r['embedded_tokens']}" if r.get("embedded_tokens") else "") + \
                    (" tied" if kind == "quantum" and r.get("readout") == "tied" else "")
                ax.annotate(f"n{r['n_qubits']} L{','.join(layers)} α{r['alpha']:g}{rows}", (r[x_key], r["ppl_full_mean"]),
                            fontsize=7, xytext=(4, 3), textcoords="offset points")
            front = pareto_front([(r[x_key], r["ppl_full_mean"]) for r in pts])
            ax.step([x for x, _ in front], [y for _, y in front], where="post", color=f"C{i}", alpha=0.5,
                    ls="--", label=f"{kind} Pareto front")
        lines = {}  # one line per distinct baseline figure: the unigram differs per vocabulary size
        for r in summary:
            for name in baselines:
                label = name if name == "teacher" else f"{name} V={2 ** r['n_qubits']}"
                lines[label] = r[f"ppl_full_{name}"]
        for j, (label, value) in enumerate(sorted(lines.items())):
            ax.axhline(value, color=f"C{j + 2}", lw=1, ls=":", label=f"{label} {value:.0f}")
        ax.set(xscale="log", yscale="log", xlabel=x_label, ylabel="test ppl_full (full tokenizer vocabulary)",
               title=f"ppl_full vs {x_key}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    return save_png(fig, path)
