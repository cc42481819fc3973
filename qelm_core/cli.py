"""The `qelm` command: one sub-command per pipeline stage plus the user tools around them.

Every command reads params.yaml once, runs, and turns a QelmError into one line on stderr and
exit code 2 (anything else is a bug and keeps its traceback).
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import typer

from qelm_core.config import Paths, QelmError, load_params

app = typer.Typer(add_completion=False, no_args_is_help=True, help="qelm: distil an LLM into a quantum student.")
PARAMS = typer.Option(Path("params.yaml"), "--params", "-p", help="params file")


def fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def run_stage(name: str, params_path: Path) -> dict:
    try:
        params = load_params(params_path)
        stage = importlib.import_module(f"qelm_core.stages.{name}")
        result = stage.run(params, Paths.here())
    except QelmError as err:
        fail(str(err))
    typer.echo(json.dumps(result, indent=2, default=str))
    return result


def _stage_command(name: str, doc: str):
    def command(params: Path = PARAMS) -> None:
        run_stage(name, params)

    command.__doc__ = doc
    app.command(name)(command)


for _name, _doc in [
    ("prepare", "Corpus -> vocabulary and token-id splits (GX-validated)."),
    ("teacher", "Teacher LLM soft targets on the student vocabulary (resumable shards)."),
    ("train", "Distil the quantum student and its equal-parameter classical twin."),
    ("evaluate", "Test perplexity/accuracy of every model beside the baselines; sizes; noisy hardware."),
    ("register", "Log the student to the MLflow registry as a new version aliased `challenger`."),
]:
    _stage_command(_name, _doc)


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

    from qelm_core.predict import NextTokenPredictor

    try:
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
    params: Path = PARAMS,
) -> None:
    """Move the `champion` alias to the `challenger` if it has lower test perplexity on the same data."""
    from rich.console import Console
    from rich.table import Table

    from qelm_core import tracking
    from qelm_core.registry import promote as promote_challenger

    try:
        name = load_params(params).registry.model_name
        tracking.configure(Paths.here())
        decision = promote_challenger(name, force)
    except QelmError as err:
        fail(str(err))
    table = Table(title=f"{name}: {'PROMOTED' if decision.promote else 'unchanged'} ({decision.reason})")
    for column in ("alias", "version", "ppl_quantum (test)", "test data hash"):
        table.add_column(column)
    for row in decision.rows:
        table.add_row(*row)
    Console().print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
