"""The sweep report (the qelm-sweep flow writes it; apart from reports.py so that the evaluate stage does
not depend on it). Per-run rows, per-configuration summary over seeds, the best student, a Pareto plot.

Pure functions over the stages' own metrics (train: parameter counts and validation perplexity;
evaluate: test and validation perplexities, bytes on disk and the baselines). Points are compared on
`ppl_full` (the actual next token in the tokenizer's full vocabulary, evaluate.py), which is comparable
across vocabulary sizes: the V-entry perplexity always favours the smallest V. The best quantum student
is chosen on *validation* ppl_full (choosing on test would tune on the test set the table then reports).
"""
from __future__ import annotations

import csv
import functools
import io
import statistics
from pathlib import Path

from qelm_core import tracking
from qelm_core.config import Paths
from qelm_core.io import atomic_write_text
from qelm_core.lm.student import ADDED_KEYS
from qelm_core.plots import pareto_plot

MODELS = ("student", "classical")  # the same names prefix their metrics in train and evaluate
KINDS = ("quantum", "classical")
BASELINES = ("unigram", "bigram", "teacher")
FULL_BASELINES = ("unigram", "teacher")  # the full-vocabulary figures the Pareto plot draws as lines
# what tells one configuration from another (seeds aside): report key -> params.yaml key, and the value a
# row without the key had (sweeps before that axis existed)
CONFIG = {"n_qubits": "student.n_qubits", "layers": "student.layers", "alpha": "train.alpha",
          "embedded_tokens": "student.embedded_tokens", "readout": "student.readout"}
CONFIG_DEFAULTS = {name: ADDED_KEYS[key.removeprefix("student.")] for name, key in CONFIG.items()
                   if key.removeprefix("student.") in ADDED_KEYS}  # older rows: what older students did


def config_of(params) -> dict:
    """A run's configuration: CONFIG's keys read from its validated Params."""
    return {name: functools.reduce(getattr, key.split("."), params) for name, key in CONFIG.items()}


def rows(points: dict[str, dict], train: dict[str, dict], evaluate: dict[str, dict]) -> list[dict]:
    """One row per (grid point, kind). `points`: label -> {every CONFIG key, seed}."""
    out = []
    for label, point in points.items():
        t, e = train[label], evaluate[label]
        for model in MODELS:
            kind = e.get("student_kind", "quantum") if model == "student" else "classical"
            out.append({"label": label, **point, "model": model, "kind": kind, "params": int(t[f"{model}_params_total"]),
                        "bytes": int(e[f"bytes_{model}"]), "val_ppl": float(t[f"{model}_val_ppl"]),
                        "test_ppl": float(e[f"ppl_{model}"]), "val_ppl_full": float(e[f"ppl_full_val_{model}"]),
                        "ppl_full": float(e[f"ppl_full_{model}"]),
                        **{f"ppl_{b}": float(e[f"ppl_{b}"]) for b in BASELINES},
                        **{f"ppl_full_{b}": float(e[f"ppl_full_{b}"]) for b in FULL_BASELINES},
                        "mlflow_run_id": t.get("mlflow_run_id", "")})
    return out


def summarize(table: list[dict]) -> list[dict]:
    """Mean and spread over seeds for each configuration (CONFIG) and model."""
    def sd(values):
        return statistics.stdev(values) if len(values) > 1 else 0.0

    groups: dict[tuple, list[dict]] = {}
    for row in table:
        config = tuple(row.get(k, CONFIG_DEFAULTS.get(k)) for k in CONFIG)
        groups.setdefault((*config, row["model"]), []).append(row)
    out = []
    for (*config, model), members in groups.items():
        test, full = [m["test_ppl"] for m in members], [m["ppl_full"] for m in members]
        out.append({**dict(zip(CONFIG, config)), "model": model, "kind": members[0]["kind"],
                    "seeds": len(members), "params": members[0]["params"], "bytes": members[0]["bytes"],
                    "ppl_full_mean": statistics.fmean(full), "ppl_full_std": sd(full),
                    "val_ppl_full_mean": statistics.fmean(m["val_ppl_full"] for m in members),
                    "test_ppl_mean": statistics.fmean(test), "test_ppl_std": sd(test),
                    "val_ppl_mean": statistics.fmean(m["val_ppl"] for m in members),
                    **{f"ppl_{b}": members[0][f"ppl_{b}"] for b in BASELINES},
                    **{f"ppl_full_{b}": members[0][f"ppl_full_{b}"] for b in FULL_BASELINES}})
    return sorted(out, key=lambda r: (r["n_qubits"], r["kind"], r["params"], r["ppl_full_mean"]))


def winners(table: list[dict]) -> dict[int, dict]:
    """The student run with the lowest validation ppl_full for each vocabulary size (n_qubits)."""
    out: dict[int, dict] = {}
    for row in table:
        if row["model"] == "student" and (row["n_qubits"] not in out or row["val_ppl_full"] < out[row["n_qubits"]]["val_ppl_full"]):
            out[row["n_qubits"]] = row
    return out


def registered_winner(table: list[dict]) -> dict:
    """The run the sweep registers: the lowest validation ppl_full over every vocabulary size."""
    best = winners(table)
    if not best:
        raise ValueError("the sweep has no student run to register")
    return min(best.values(), key=lambda r: r["val_ppl_full"])


def write_csv(path: Path, table: list[dict]) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(table[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    atomic_write_text(path, buf.getvalue())
    return path


def publish_pareto(plots: Path, summary: list[dict]) -> list[Path]:
    """The project's own Pareto figure: plots/pareto.png and one CSV per kind (a DVC plot in dvc.yaml)."""
    files = [pareto_plot(plots / "pareto.png", summary, FULL_BASELINES)]
    for kind in KINDS:
        rows = [r for r in summary if r["kind"] == kind]
        if rows:
            files.append(write_csv(plots / f"pareto_{kind}.csv", rows))
    return files


def write_files(out: Path, plots: Path, table: list[dict], summary: list[dict]) -> list[Path]:
    """The sweep's own files under `out` (Pareto plot, runs.csv, summary.csv) and the project's Pareto figure."""
    files = [pareto_plot(out / "pareto.png", summary, FULL_BASELINES), write_csv(out / "runs.csv", table),
             write_csv(out / "summary.csv", summary)]
    return files + publish_pareto(plots, summary)


def markdown(summary: list[dict], table: list[dict], registered: dict, url: str) -> str:
    lines = [f"## Sweep: {len(summary)} configurations\n", f"MLflow: [{url}]({url})\n",
             "Best quantum student per vocabulary, chosen on validation ppl_full (the next token's perplexity "
             "in the tokenizer's full vocabulary, comparable across V); the best over all is registered:\n"]
    lines += [f"- V = {2 ** n}: **{w['label']}**, test ppl_full {w['ppl_full']:.1f} (over V: {w['test_ppl']:.3f}), "
              f"{w['params']} parameters" + (" (registered as challenger)" if w["label"] == registered["label"] else "")
              for n, w in sorted(winners(table).items())]
    lines += ["", "| n_qubits | layers | alpha | embedded tokens | read-out | kind | params | bytes | "
              "test ppl_full (mean ± sd) | test ppl over V (mean ± sd) | seeds |", "|" + "---|" * 11]
    lines += [f"| {r['n_qubits']} | {r['layers']} | {r['alpha']:g} | {r['embedded_tokens'] or 'all'} | "
              f"{r['readout'] if r['kind'] == 'quantum' else ''} | {r['kind']} | "
              f"{r['params']} | {r['bytes']} | "
              f"{r['ppl_full_mean']:.1f} ± {r['ppl_full_std']:.1f} | {r['test_ppl_mean']:.3f} ± {r['test_ppl_std']:.3f} | "
              f"{r['seeds']} |" for r in summary]
    for n in sorted({r["n_qubits"] for r in summary}):
        r = next(s for s in summary if s["n_qubits"] == n)
        lines.append(f"\nBaselines at V = {2 ** n}: ppl_full unigram {r['ppl_full_unigram']:.1f}, teacher "
                     f"{r['ppl_full_teacher']:.1f}; over V: unigram {r['ppl_unigram']:.3f}, bigram {r['ppl_bigram']:.3f}, "
                     f"teacher {r['ppl_teacher']:.3f}")
    return "\n".join(lines)


def publish(project: Paths, grid: dict, points: dict[str, dict], train: dict[str, dict], evaluate: dict[str, dict],
            out: Path, tags: dict[str, str]) -> dict:
    """Table, summary and files of a sweep -> one MLflow run (its id tagged onto every point's run, with `tags`).
    -> {mlflow_run_id, url, best (the registered winner's row), markdown, folder}."""
    table = rows(points, train, evaluate)
    summary = summarize(table)
    best = registered_winner(table)
    files = write_files(out, project.plots, table, summary)
    keys = ("ppl_full", "val_ppl_full", "test_ppl", "val_ppl", "params", "bytes", "n_qubits", "mlflow_run_id")
    run_id = tracking.log_sweep(project, grid, table, summary, files, {k: best[k] for k in keys})
    for point_run in {r["mlflow_run_id"] for r in table if r["mlflow_run_id"]}:
        tracking.tag_run(point_run, {**tags, "qelm.sweep_run_id": run_id})
    url = tracking.run_url(run_id)
    return {"mlflow_run_id": run_id, "url": url, "best": best, "markdown": markdown(summary, table, best, url),
            "folder": str(out)}
