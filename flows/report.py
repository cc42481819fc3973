"""Sweep results: per-run rows, per-configuration summary over seeds, the best student, a Pareto plot.

Pure functions over the stages' own metrics (train: parameter counts and validation perplexity;
evaluate: test perplexity and the baselines). The best quantum student is chosen on *validation*
perplexity: choosing on test perplexity would tune on the test set the table then reports.
"""
from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path

from qelm_core.io import atomic_write_bytes, atomic_write_text

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

KINDS = {"quantum": "student", "classical": "classical"}  # kind -> prefix in the train stage's metrics
BASELINES = ("unigram", "bigram", "teacher")


def rows(points: dict[str, dict], train: dict[str, dict], evaluate: dict[str, dict]) -> list[dict]:
    """One row per (grid point, kind). `points`: label -> {n_qubits, layers, alpha, seed}."""
    out = []
    for label, point in points.items():
        t, e = train[label], evaluate[label]
        for kind, prefix in KINDS.items():
            out.append({"label": label, **point, "kind": kind, "params": int(t[f"{prefix}_params_total"]),
                        "val_ppl": float(t[f"{prefix}_val_ppl"]), "test_ppl": float(e[f"ppl_{kind}"]),
                        **{f"ppl_{b}": float(e[f"ppl_{b}"]) for b in BASELINES},
                        "mlflow_run_id": t.get("mlflow_run_id", "")})
    return out


def summarize(table: list[dict]) -> list[dict]:
    """Mean and spread over seeds for each (n_qubits, layers, alpha, kind)."""
    groups: dict[tuple, list[dict]] = {}
    for row in table:
        groups.setdefault((row["n_qubits"], row["layers"], row["alpha"], row["kind"]), []).append(row)
    out = []
    for (n, layers, alpha, kind), members in groups.items():
        test = [m["test_ppl"] for m in members]
        out.append({"n_qubits": n, "layers": layers, "alpha": alpha, "kind": kind, "seeds": len(members),
                    "params": members[0]["params"], "test_ppl_mean": statistics.fmean(test),
                    "test_ppl_std": statistics.stdev(test) if len(test) > 1 else 0.0,
                    "val_ppl_mean": statistics.fmean(m["val_ppl"] for m in members),
                    **{f"ppl_{b}": members[0][f"ppl_{b}"] for b in BASELINES}})
    return sorted(out, key=lambda r: (r["n_qubits"], r["kind"], r["params"], r["test_ppl_mean"]))


def best_quantum(table: list[dict]) -> dict:
    """The quantum run with the lowest validation perplexity."""
    return min((r for r in table if r["kind"] == "quantum"), key=lambda r: r["val_ppl"])


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(params, ppl) points no other point beats on both (fewer-or-equal parameters and lower perplexity)."""
    front, best = [], float("inf")
    for x, y in sorted(points):
        if y < best:
            front.append((x, y))
            best = y
    return front


def pareto_plot(path: Path, summary: list[dict]) -> Path:
    """Test perplexity vs trainable parameters, quantum vs classical, one panel per vocabulary size."""
    sizes = sorted({r["n_qubits"] for r in summary})
    fig, axes = plt.subplots(1, len(sizes), figsize=(6.5 * len(sizes), 4.5), dpi=120, squeeze=False)
    for ax, n in zip(axes[0], sizes):
        panel = [r for r in summary if r["n_qubits"] == n]
        for i, (kind, marker) in enumerate((("quantum", "o"), ("classical", "s"))):
            pts = [r for r in panel if r["kind"] == kind]
            ax.errorbar([r["params"] for r in pts], [r["test_ppl_mean"] for r in pts],
                        yerr=[r["test_ppl_std"] for r in pts], fmt=marker, color=f"C{i}", capsize=3,
                        label=f"{kind} (mean ± sd over seeds)")
            for r in pts:
                ax.annotate(f"L{r['layers']} α{r['alpha']:g}", (r["params"], r["test_ppl_mean"]), fontsize=7,
                            xytext=(4, 3), textcoords="offset points")
            front = pareto_front([(r["params"], r["test_ppl_mean"]) for r in pts])
            ax.step([x for x, _ in front], [y for _, y in front], where="post", color=f"C{i}", alpha=0.5,
                    ls="--", label=f"{kind} Pareto front")
        for j, name in enumerate(BASELINES):
            value = statistics.fmean(r[f"ppl_{name}"] for r in panel)
            ax.axhline(value, color=f"C{j + 2}", lw=1, ls=":", label=f"{name} {value:.2f}")
        ax.set(xscale="log", yscale="log", xlabel="trainable parameters", ylabel="test perplexity",
               title=f"V = {2 ** n} (n_qubits = {n})")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def write_csv(path: Path, table: list[dict]) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(table[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    atomic_write_text(path, buf.getvalue())
    return path


def publish_pareto(plots: Path, summary: list[dict]) -> list[Path]:
    """The project's own Pareto figure: plots/pareto.png and one CSV per kind (a DVC plot in dvc.yaml)."""
    files = [pareto_plot(plots / "pareto.png", summary)]
    for kind in KINDS:
        rows = [r for r in summary if r["kind"] == kind]
        if rows:
            files.append(write_csv(plots / f"pareto_{kind}.csv", rows))
    return files


def markdown(summary: list[dict], best: dict, url: str) -> str:
    lines = [f"## Sweep: {len(summary)} configurations\n", f"MLflow: [{url}]({url})\n",
             f"Best quantum student (validation): **{best['label']}**, test perplexity {best['test_ppl']:.3f}, "
             f"{best['params']} parameters\n",
             "| n_qubits | layers | alpha | kind | params | test ppl (mean ± sd) | seeds |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['n_qubits']} | {r['layers']} | {r['alpha']:g} | {r['kind']} | {r['params']} | "
              f"{r['test_ppl_mean']:.3f} ± {r['test_ppl_std']:.3f} | {r['seeds']} |" for r in summary]
    if summary:
        r = summary[0]
        lines.append(f"\nBaselines: unigram {r['ppl_unigram']:.3f}, bigram {r['ppl_bigram']:.3f}, "
                     f"teacher {r['ppl_teacher']:.3f}")
    return "\n".join(lines)
