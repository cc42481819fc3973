"""One thin entry point per classify stage: `qelm classify-<stage>` or `python -m qelm_core.classify.stages.<stage>`.

Each module has `run(params, paths) -> dict`; `run_stage` loads classify/params.yaml, sets torch's
threads from the stage's work (qelm_core/threads.py) and calls it.
"""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

from qelm_core import threads
from qelm_core.classify.config import DEFAULT_PARAMS, ClassifyPaths, load_classify_params
from qelm_core.config import QelmError

STAGES = ("prepare", "features", "teacher", "train", "evaluate", "register")


def run_stage(name: str, params_path: str | Path = DEFAULT_PARAMS) -> dict:
    if name not in STAGES:
        raise QelmError(f"unknown classify stage {name!r}; one of {', '.join(STAGES)}")
    params = load_classify_params(params_path)
    threads.use(threads.stage_work(f"classify-{name}", params.student.n_qubits, params.train.batch_size))
    return importlib.import_module(f"qelm_core.classify.stages.{name}").run(params, ClassifyPaths.here())


def main(name: str) -> None:
    """`python -m qelm_core.classify.stages.<name> [params.yaml]`: errors are one line, exit code 2."""
    try:
        result = run_stage(name, sys.argv[1] if len(sys.argv) > 1 else DEFAULT_PARAMS)
    except QelmError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(result, indent=2, default=str))
