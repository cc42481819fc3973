"""The `qelm` command: one sub-command per pipeline stage plus the user tools around them.

Every command reads params.yaml once, runs, and turns a QelmError into one line on stderr and
exit code 2; an error that may pass by itself (I/O, memory, network: is_transient) keeps its
traceback and exits 75, which the flows retry; anything else is a bug and keeps its traceback.
Torch threads: qelm_core/threads.py, its variables checked at start, the count set per stage (and
command) from its work.
"""
from __future__ import annotations

import importlib
import json
import signal
import traceback
from pathlib import Path

import typer

from qelm_core import threads
from qelm_core.config import EXIT_TRANSIENT, ConfigError, Paths, QelmError, is_transient, load_params, validate_params

app = typer.Typer(add_completion=False, no_args_is_help=True, help="qelm: distil an LLM into a quantum student.")
PARAMS = typer.Option(Path("params.yaml"), "--params", "-p", help="params file")


def fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


LM_STAGES = "qelm_core.lm.stages"
CLASSIFY_STAGES = "qelm_core.classify.stages"


def load_task(package: str, params_path: Path):
    """-> (typed params, paths) of the pipeline whose stage modules live in `package`."""
    if package == CLASSIFY_STAGES:
        from qelm_core.classify.config import ClassifyPaths, load_classify_params

        return load_classify_params(params_path), ClassifyPaths.here()
    return load_params(params_path), Paths.here()


def run_stage(name: str, params_path: Path, package: str = LM_STAGES) -> dict:
    """The one stage dispatcher of both pipelines: params loaded once, torch threads set from the stage's
    work, `<package>.<name>.run(params, paths)`; a QelmError is one line and exit 2, a transient error
    exit 75 (the flows retry it), anything else a bug with its traceback."""
    try:
        params, paths = load_task(package, params_path)
        work_name = name if package == LM_STAGES else f"classify-{name}"
        threads.use(threads.stage_work(work_name, params.student.n_qubits, params.train.batch_size))
        result = importlib.import_module(f"{package}.{name}").run(params, paths)
    except QelmError as err:
        fail(str(err))
    except Exception as err:
        if not is_transient(err):
            raise
        traceback.print_exc()
        raise typer.Exit(EXIT_TRANSIENT) from None
    typer.echo(json.dumps(result, indent=2, default=str))
    return result


def _stage_command(name: str, doc: str, package: str = LM_STAGES, params_option=PARAMS):
    def command(params: Path = params_option) -> None:
        run_stage(name, params, package)

    command.__doc__ = doc
    app.command(name if package == LM_STAGES else f"classify-{name}")(command)


for _name, _doc in [
    ("prepare", "Corpus -> vocabulary and token-id splits (GX-validated)."),
    ("teacher", "Teacher LLM soft targets on the student vocabulary (resumable shards)."),
    ("assign", "Vocabulary -> basis-state map for the quantum student's read-out (train data only)."),
    ("train", "Distil the quantum student and its equal-parameter classical twin."),
    ("evaluate", "Test perplexity/accuracy of every model beside the baselines; sizes; noisy hardware."),
    ("register", "Log the student to the MLflow registry as a new version aliased `challenger`."),
]:
    _stage_command(_name, _doc)


# ---- text classification (issue #7): classify/dvc.yaml runs these; code in qelm_core/classify/
CLASSIFY_PARAMS = typer.Option(Path("classify/params.yaml"), "--params", "-p", help="classify params file")

for _name, _doc in [
    ("prepare", "Classification datasets -> stratified splits (GX-validated)."),
    ("features", "MiniLM embeddings and teacher hidden states for every split (cached shards)."),
    ("teacher", "Linear head on the teacher LLM's hidden states -> soft labels."),
    ("train", "Quantum classifier, MLP and logistic regression per dataset and seed (same loss)."),
    ("evaluate", "Accuracy / macro-F1 of every model, exact and on a noisy fake IBM backend."),
    ("register", "Log the quantum classifier to the MLflow registry as `qelm-classifier`."),
]:
    _stage_command(_name, _doc, CLASSIFY_STAGES, CLASSIFY_PARAMS)


@app.command("classify-predict")
def classify_predict(
    text: list[str] = typer.Option(..., "--text", "-t", help="text to classify (repeatable)"),
    dataset: str = typer.Option(None, "--dataset", "-d", help="which trained classifier (default: the first)"),
    seed: int = typer.Option(None, "--seed", help="which seed's model (default: the first seed)"),
    params: Path = CLASSIFY_PARAMS,
) -> None:
    """Classify texts with the trained quantum classifier."""
    from qelm_core.classify.config import ClassifyPaths, load_classify_params
    from qelm_core.classify.predict import TextClassifier

    try:
        threads.use(0)  # a few texts through a small classifier (the MiniLM encoder included)
        cp = load_classify_params(params)
        paths = ClassifyPaths.here()
        seed_ = cp.seeds[0] if seed is None else seed
        clf = TextClassifier.from_folders({d: paths.model_dir(d, seed_, "quantum") for d in cp.datasets})
        labels, probs = clf.predict(text, dataset)
    except QelmError as err:
        fail(str(err))
    for t, label, p in zip(text, labels, probs):
        typer.echo(f"{label}\t{p.max():.3f}\t{t[:80]}")


@app.command()
def predict(
    text: str = typer.Option(..., "--text", "-t", help="context text; its last tokens are the student's input"),
    model: Path = typer.Option(Path("models/student"), "--model", "-m", help="a saved student folder"),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1),
    params: Path = PARAMS,
) -> None:
    """Print the student's top-k next tokens with probabilities."""
    from rich.console import Console
    from rich.table import Table

    from qelm_core.lm.predict import NextTokenPredictor

    try:
        threads.use(0)  # one context through a small student
        predictor = NextTokenPredictor.from_folder(model, load_params(params).teacher.model)
        rows = predictor.top_k(text, top_k)
    except QelmError as err:
        fail(str(err))
    table = Table(title=f"next token after {text[-40:]!r}")
    table.add_column("token")
    table.add_column("p", justify="right")
    for token, prob in rows:
        table.add_row(repr(token), f"{prob:.4f}")
    Console().print(table)


@app.command()
def promote(
    force: bool = typer.Option(False, "--force", help="promote even if the challenger is not better (logged)"),
    model: str = typer.Option("", "--model", "-m",
                              help="registered model (default: the LM student's registry.model_name; "
                                   "the classifier: qelm-classifier)"),
    params: Path = PARAMS,
) -> None:
    """Move the `champion` alias to the `challenger` if it is better on the same test data (each version's
    gate: the LM student's test perplexity, the classifier's test accuracy) and loads."""
    from rich.console import Console
    from rich.table import Table

    from qelm_core import tracking
    from qelm_core.registry import promote as promote_challenger

    try:
        name = model or load_params(params).registry.model_name
        tracking.configure(Paths.here())
        decision = promote_challenger(name, force)
    except QelmError as err:
        fail(str(err))
    table = Table(title=f"{name}: {'PROMOTED' if decision.promote else 'unchanged'} ({decision.reason})")
    for column in ("alias", "version", f"{decision.metric} (this version)", "test data hash"):
        table.add_column(column)
    for row in decision.rows:
        table.add_row(*row)
    Console().print(table)


@app.command()
def bench(
    quick: bool = typer.Option(False, "--quick", help="small grid (n 4, 6; batch 1, 64), tiny teacher batches"),
    teacher: bool = typer.Option(True, "--teacher/--no-teacher", help="teacher section (loads the LLM, ~20 s)"),
    torch_device: str = typer.Option("cpu", "--torch-device", help="cpu | cuda: where fused and default.qubit run"),
    output: Path = typer.Option(None, "--output", "-o", help="JSON results (default: metrics/bench.json)"),
    plot: Path = typer.Option(None, "--plot", help="samples/s plot (default: plots/bench_samples_per_s.png)"),
    mlflow: bool = typer.Option(True, "--mlflow/--no-mlflow", help="log a run to the MLflow experiment qelm-bench"),
    serve: bool = typer.Option(True, "--serve/--no-serve", help="REST latency of the champion under load (needs one)"),
    dvc: bool = typer.Option(False, "--dvc", help="also time a cold + a no-op `dvc repro` in a fresh clone (minutes)"),
    only: list[str] = typer.Option([], "--only", help="re-measure only this section of an existing bench.json "
                                   "(engines, tied, training, threads, teacher, serving, dvc; repeatable)"),
    n: list[int] = typer.Option([], "--n", min=1, max=20, help="qubit counts of the engine grid (repeatable)"),
    batch: list[int] = typer.Option([], "--batch", min=1, help="batch sizes of the engine grid (repeatable)"),
    params: Path = PARAMS,
) -> None:
    """Time the circuit engines side by side, teacher inference, training and its thread policy; write
    bench.json + a plot."""
    from rich.console import Console
    from rich.table import Table

    from qelm_core.bench import run_bench

    err = Console(stderr=True)
    try:
        r = run_bench(load_params(params), Paths.here(), quick, teacher, torch_device, output, plot, mlflow,
                      log=lambda message: err.print(f"[dim]bench: {message}[/dim]"), serve=serve, dvc=dvc,
                      only=tuple(only), n_qubits=tuple(n), batches=tuple(batch))
    except QelmError as error:
        fail(str(error))
    table = Table(title="fwd+bwd per call (median of interleaved rounds)")
    for column in ("engine", "n", "batch", "ms", "samples/s", "vs fused", "MiB"):
        table.add_column(column, justify="left" if column == "engine" else "right", no_wrap=True)
    notes = []
    for c in r["cells"]:
        num = [f"{c[k]:{f}}" if c.get(k) is not None else "" for k, f in
               (("ms", ".2f"), ("samples_per_s", ",.0f"), ("time_vs_fused", ".2f"), ("peak_extra_mib", ".1f"))]
        if c["reason"]:  # skipped or timed once: a footnote with the reason
            notes.append(f"[{len(notes) + 1}] {c['engine']} n={c['n']} batch={c['batch']}: "
                         f"{c['status']}, {c['reason']}")
            num[0] = f"{num[0]} [{len(notes)}]".strip()
        table.add_row(c["engine"], str(c["n"]), str(c["batch"]), *num)
    summary = Table(title="end to end")
    for column in ("section", "result", "data"):
        summary.add_column(column)
    t, tr = r["teacher"], r["training"]
    summary.add_row("teacher", f"pipeline {t['pipeline_tokens_per_s']:,.0f} tok/s vs bare {t['bare_tokens_per_s']:,.0f}"
                    f" = {t['pipeline_vs_bare']:.2f}x (target >= {t['target']})" if t["status"] == "ok"
                    else f"skipped: {t['reason']}", t.get("data", ""))
    summary.add_row("training", f"{tr['tokens_per_s']:,.0f} tok/s ({tr['steps']} steps, batch {tr['batch_size']})",
                    tr["data"])
    for row in r.get("tied", {}).get("rows", []):
        summary.add_row(f"tied read-out n={row['n']}", f"float32 {row['ms_float32']:.1f} ms vs bfloat16 "
                        f"{row['ms_bfloat16']:.1f} ms per step = {row['float32_vs_bfloat16']:.2f}x", f"batch {row['batch']}")
    for name, st in r.get("threads", {}).get("students", {}).items():
        summary.add_row(f"threads: {name}", f"policy {st['policy_threads']} vs default {st['default_threads']} "
                        "threads: " + ", ".join(f"{c} {st['default_vs_policy'][c]:.2f}x" for c in ("quiet", "busy"))
                        + " (default time / policy time)", f"{st['kind']}, n={st['n_qubits']}, batch {st['batch']}")
    s, d = r["serving"], r["dvc"]
    summary.add_row("serving", f"p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, {s['errors']} errors of "
                    f"{s['requests']} ({s['clients']} clients)" if s["status"] == "ok" else f"skipped: {s['reason']}",
                    s.get("model", ""))
    summary.add_row("dvc repro", f"cold {d['full_repro_s']:.0f} s (target <= {d['target_full_s']:.0f}), no-op "
                    f"{d['noop_repro_s']:.1f} s (target <= {d['target_noop_s']:.0f})" if d["status"] == "ok"
                    else f"skipped: {d['reason']}", d.get("commit", "")[:10])
    console = Console()
    console.print(table)
    for note in notes:
        console.print(note)
    console.print(summary)
    typer.echo(f"wrote {output or Paths.here().metrics / 'bench.json'} and {r['plot']}"
               + (f"; MLflow run {r['mlflow_run_id']} (experiment qelm-bench)" if r["mlflow_run_id"] else ""))


@app.command()
def serve(
    limit: int = typer.Option(None, "--limit", min=1, help="most flow runs at the same time"),
    name: str = typer.Option("default", "--name", help="deployment name"),
) -> None:
    """Serve the Prefect deployments qelm-pipeline/<name> and qelm-sweep/<name> (see flows/serve.py)."""
    from flows.serve import main as serve_flows

    serve_flows(limit, name)


@app.command()
def flow(
    overrides: list[str] = typer.Option([], "--set", "-S", metavar="KEY=VALUE",
                                        help="a Run-form field (layers=4) or a dotted params.yaml key (evaluate.shots=100)"),
) -> None:
    """Run the qelm-pipeline flow once without a server, like the UI's Run: a DVC experiment (see flows/pipeline.py)."""
    import yaml

    from flows.params import KEYS, Overrides
    from flows.pipeline import run_once

    fields, extra = {}, {}
    try:
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"--set {item}: expected KEY=VALUE")
            (fields if key in KEYS else extra)[key] = yaml.safe_load(value)
        result = run_once(validate_params(Overrides, {**fields, "extra": extra}, "--set"))  # one line naming the field
    except QelmError as err:  # bad input: one line (Prefect has logged the details)
        fail(str(err))
    typer.echo(yaml.safe_dump(result, sort_keys=False))


@app.command("serve-model")
def serve_model(
    model: str = typer.Option("models:/qelm-student@champion", "--model", "-m", help="model URI to serve"),
    host: str = typer.Option("127.0.0.1", "--host", "-h"),
    port: int = typer.Option(5001, "--port", "-p"),
    workers: int = typer.Option(1, "--workers", "-w", min=1, help="server processes (they split the cores)"),
) -> None:
    """Serve a registered model over REST: MLflow's scoring server, bodies over 1 MiB refused with a 413."""
    from qelm_core import tracking
    from qelm_core.serving import serve_model as serve_in_foreground

    try:
        uri = tracking.configure(Paths.here())
        typer.echo(f"starting {model} on http://{host}:{port}/invocations (Ctrl-C stops)", err=True)
        code = serve_in_foreground(model, uri, host, port, workers)
    except QelmError as err:
        fail(str(err))
    raise typer.Exit(code)


def _terminated(signum: int, frame) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    # SIGTERM (kill, a CI timeout, Prefect cancelling) unwinds like Ctrl-C: `with` blocks run, so the
    # MLflow run ends FAILED and temporary outputs are removed instead of being left half-written.
    signal.signal(signal.SIGTERM, _terminated)
    try:
        threads.configure()  # a bad QELM_THREADS / QELM_CORES is one line, before any work
    except QelmError as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        raise SystemExit(2) from None
    app()


if __name__ == "__main__":
    main()
