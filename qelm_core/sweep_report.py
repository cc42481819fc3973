"""The sweep report (the qelm-sweep flow writes it; apart from reports.py so that the evaluate stage does
not depend on it). Per-run rows, per-configuration summary over seeds, the best student, a Pareto plot.

Pure functions over the stages' own metrics (train: parameter counts and validation perplexity;
evaluate: test perplexity and the baselines). The best quantum student is chosen on *validation*
perplexity (choosing on test perplexity would tune on the test set the table then reports), and only
among points with the same vocabulary size: the registered one is the winner at the grid's first
n_qubits value.
"""
from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path

from qelm_core.io import atomic_write_text
from qelm_core.plots import pareto_plot

MODELS = ("student", "classical")  # the same names prefix their metrics in train and evaluate
KINDS = ("quantum", "classical")
BASELINES = ("unigram", "bigram", "teacher")


def rows(points: dict[str, dict], train: dict[str, dict], evaluate: dict[str, dict]) -> list[dict]:
    """One row per (grid point, kind). `points`: label -> {n_qubits, layers, alpha, seed}."""
    out = []
    for label, point in points.items():
        t, e = train[label], evaluate[label]
        for model in MODELS:
            kind = e.get("student_kind", "quantum") if model == "student" else "classical"
            out.append({"label": label, **point, "model": model, "kind": kind, "params": int(t[f"{model}_params_total"]),
                        "val_ppl": float(t[f"{model}_val_ppl"]), "test_ppl": float(e[f"ppl_{model}"]),
                        **{f"ppl_{b}": float(e[f"ppl_{b}"]) for b in BASELINES},
                        "mlflow_run_id": t.get("mlflow_run_id", "")})
    return out


def summarize(table: list[dict]) -> list[dict]:
    """Mean and spread over seeds for each (n_qubits, layers, alpha, model)."""
    groups: dict[tuple, list[dict]] = {}
    for row in table:
        groups.setdefault((row["n_qubits"], row["layers"], row["alpha"], row["model"]), []).append(row)
    out = []
    for (n, layers, alpha, model), members in groups.items():
        test = [m["test_ppl"] for m in members]
        out.append({"n_qubits": n, "layers": layers, "alpha": alpha, "model": model, "kind": members[0]["kind"], "seeds": len(members),
                    "params": members[0]["params"], "test_ppl_mean": statistics.fmean(test),
                    "test_ppl_std": statistics.stdev(test) if len(test) > 1 else 0.0,
                    "val_ppl_mean": statistics.fmean(m["val_ppl"] for m in members),
                    **{f"ppl_{b}": members[0][f"ppl_{b}"] for b in BASELINES}})
    return sorted(out, key=lambda r: (r["n_qubits"], r["kind"], r["params"], r["test_ppl_mean"]))


def winners(table: list[dict]) -> dict[int, dict]:
    """The student run with the lowest validation perplexity for each vocabulary size (n_qubits): a
    perplexity over V = 2^n entries is not comparable across n (the smallest vocabulary always wins)."""
    out: dict[int, dict] = {}
    for row in table:
        if row["model"] == "student" and (row["n_qubits"] not in out or row["val_ppl"] < out[row["n_qubits"]]["val_ppl"]):
            out[row["n_qubits"]] = row
    return out


def registered_winner(table: list[dict], n_qubits: int) -> dict:
    """The run the sweep registers: the winner among the points with vocabulary 2^n_qubits."""
    best = winners(table)
    if n_qubits not in best:
        raise ValueError(f"no student run with n_qubits = {n_qubits} in the sweep (it has {sorted(best)})")
    return best[n_qubits]


def write_csv(path: Path, table: list[dict]) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(table[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    atomic_write_text(path, buf.getvalue())
    return path


def publish_pareto(plots: Path, summary: list[dict]) -> list[Path]:
    """The project's own Pareto figure: plots/pareto.png and one CSV per kind (a DVC plot in dvc.yaml)."""
    files = [pareto_plot(plots / "pareto.png", summary, BASELINES)]
    for kind in KINDS:
        rows = [r for r in summary if r["kind"] == kind]
        if rows:
            files.append(write_csv(plots / f"pareto_{kind}.csv", rows))
    return files


def write_files(out: Path, plots: Path, table: list[dict], summary: list[dict]) -> list[Path]:
    """The sweep's own files under `out` (Pareto plot, runs.csv, summary.csv) and the project's Pareto figure."""
    files = [pareto_plot(out / "pareto.png", summary, BASELINES), write_csv(out / "runs.csv", table),
             write_csv(out / "summary.csv", summary)]
    return files + publish_pareto(plots, summary)


def markdown(summary: list[dict], table: list[dict], registered: dict, url: str) -> str:
    lines = [f"## Sweep: {len(summary)} configurations\n", f"MLflow: [{url}]({url})\n",
             "Best quantum student per vocabulary (chosen on validation perplexity, compared only within one "
             "vocabulary size: perplexities over different V are not comparable):\n"]
    lines += [f"- V = {2 ** n}: **{w['label']}**, test perplexity {w['test_ppl']:.3f}, {w['params']} parameters"
              + (" (registered as challenger)" if w["label"] == registered["label"] else "")
              for n, w in sorted(winners(table).items())]
    lines += ["", "| n_qubits | layers | alpha | kind | params | test ppl (mean ± sd) | seeds |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['n_qubits']} | {r['layers']} | {r['alpha']:g} | {r['kind']} | {r['params']} | "
              f"{r['test_ppl_mean']:.3f} ± {r['test_ppl_std']:.3f} | {r['seeds']} |" for r in summary]
    for n in sorted({r["n_qubits"] for r in summary}):
        r = next(s for s in summary if s["n_qubits"] == n)
        lines.append(f"\nBaselines at V = {2 ** n}: unigram {r['ppl_unigram']:.3f}, bigram {r['ppl_bigram']:.3f}, "
                     f"teacher {r['ppl_teacher']:.3f}")
    return "\n".join(lines)
