"""A stand-in for `qelm <stage>` in tests/test_flows.py's toy DVC project: `python stage.py <stage>`.

It writes every output dvc.yaml declares for the stage (content: the params dvc.yaml lists for it and
the content of its upstream deps, so a changed input changes the outputs), metrics the sweep report
reads, and one JSON line per call to $TOY_CALLS (stage, working directory, times, the whole params.yaml).
$TOY_DELAY holds each call; $TOY_FAIL="<stage>:<exit code>:<times>:<counter file>" fails a stage's
first <times> calls with that exit code.
"""
import json
import os
import sys
import time
from pathlib import Path

import yaml

name = sys.argv[1]
spec = yaml.safe_load(Path("dvc.yaml").read_text())["stages"][name]
params = yaml.safe_load(Path("params.yaml").read_text())
start = time.time()


def value(key: str):
    node = params
    for part in key.split("."):
        node = node[part]
    return node


def read(path: Path) -> str:
    return path.read_text() if path.is_file() else "".join(p.read_text() for p in sorted(path.rglob("*")) if p.is_file())


if os.environ.get("TOY_FAIL", "").startswith(f"{name}:"):
    _, code, times, counter = os.environ["TOY_FAIL"].split(":", 3)
    done = int(Path(counter).read_text()) if Path(counter).exists() else 0
    if done < int(times):
        Path(counter).write_text(str(done + 1))
        print(f"error: toy failure {done + 1} of {times}", file=sys.stderr)
        sys.exit(int(code))

student, seed = params["student"], params["seed"]
METRICS = {  # what qelm_core/lm/sweep_report.py reads; the quantum student improves with layers
    "train": {"student_params_total": 40 * student["layers"], "classical_params_total": 85,
              "student_val_ppl": 5.0 - 0.5 * student["layers"] + 0.1 * seed, "classical_val_ppl": 4.0},
    "evaluate": {"ppl_student": 5.1 - 0.5 * student["layers"] + 0.1 * seed, "ppl_classical": 4.1,
                 "ppl_unigram": 4.5, "ppl_bigram": 3.5, "ppl_teacher": 2.5,
                 "ppl_full_student": 90.0 - 5 * student["layers"] + seed, "ppl_full_classical": 80.0,
                 "ppl_full_val_student": 95.0 - 5 * student["layers"] + seed, "ppl_full_val_classical": 85.0,
                 "ppl_full_unigram": 120.0, "ppl_full_teacher": 30.0, "bytes_student": 160 * student["layers"],
                 "bytes_classical": 340},
}
upstream = [read(Path(d)) for d in spec.get("deps", []) if d != "stage.py"]
text = json.dumps({"stage": name, "params": {k: value(k) for k in spec.get("params", [])}, "upstream": upstream})
for kind in ("outs", "metrics", "plots"):
    for entry in spec.get(kind, []):
        out = Path(entry if isinstance(entry, str) else next(iter(entry)))
        out.parent.mkdir(parents=True, exist_ok=True)
        if kind == "metrics":
            out.write_text(json.dumps({"stage": name, **METRICS.get(name, {})}))
        elif out.suffix:
            out.write_text(text)
        else:
            out.mkdir(exist_ok=True)
            (out / "out.json").write_text(text)
time.sleep(float(os.environ.get("TOY_DELAY", "0")))
with open(os.environ["TOY_CALLS"], "a") as f:
    f.write(json.dumps({"stage": name, "cwd": os.getcwd(), "start": start, "end": time.time(), "params": params}) + "\n")
