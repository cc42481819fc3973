"""Bad input, the way users give it: one line naming the problem and the fix, exit != 0, no partial outputs.

Each case runs the real `qelm` entry point in a subprocess. Corpus and params cases run `qelm prepare`
in an empty folder (its outputs must not appear); teacher, model and IBM cases run the stage that reads
the bad input in a copy of the reproduced tiny repo (its outputs must stay byte-for-byte the same).
"""
from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest

from tests.conftest import TINY_PARAMS, shakespeare_text, write_params
from tests.reliability.conftest import assert_refused, qelm, set_params, snapshot

PNG = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + b"\x00" * 17 + b"\x00\x00\x00\x00IEND\xaeB`\x82"


def prepare_in(folder: Path, corpus: str, **sections):
    """`qelm prepare` in `folder` with the tiny params, data.corpus = corpus and `sections` merged in."""
    from qelm_core.config import _merge

    params = _merge(_merge(TINY_PARAMS, {"data": {"corpus": corpus}}), sections)
    write_params(folder, params)
    proc = qelm(["prepare"], folder)
    assert not (folder / "data").exists(), "prepare left outputs behind after refusing its input"
    return proc


# ---------------------------------------------------------------- corpus


def _empty_file(d: Path) -> str:
    (d / "empty.txt").write_bytes(b"")
    return "empty.txt"


def _empty_folder(d: Path) -> str:
    (d / "texts").mkdir()
    return "texts"


def _png(d: Path) -> str:
    (d / "texts").mkdir()
    (d / "texts" / "picture.txt").write_bytes(PNG)  # a binary file named like text
    return "texts"


def _latin1(d: Path) -> str:
    (d / "latin1.txt").write_bytes(("Café crème, naïve façade. " * 400).encode("latin-1"))
    return "latin1.txt"


def _too_small(d: Path) -> str:
    (d / "tiny.txt").write_text("To be, or not to be.")
    return "tiny.txt"


@pytest.mark.parametrize("make, needles", [
    (_empty_file, ["empty.txt", "empty"]),
    (_empty_folder, ["texts", "no *.txt files"]),
    (_png, ["picture", "binary"]),
    (_latin1, ["latin1", "UTF-8"]),
    (_too_small, ["too small", "larger corpus"]),
    (lambda d: "no/such/corpus", ["no/such/corpus", "does not exist"]),
], ids=["empty-file", "empty-folder", "png", "latin1", "too-small", "missing-path"])
def test_bad_corpus_is_refused(tmp_path, make, needles):
    assert_refused(prepare_in(tmp_path, make(tmp_path)), "data.corpus" if make is not _too_small else "corpus",
                   *needles)


# ---------------------------------------------------------------- params


@pytest.mark.parametrize("sections, needles", [
    ({"train": {"steps": "many"}}, ["train.steps", "integer"]),
    ({"student": {"n_qbits": 4}}, ["student.n_qbits", "unknown key"]),
    ({"student": {"n_qubits": 0}}, ["student.n_qubits", "greater than or equal to 1"]),
    ({"student": {"n_qubits": 21}}, ["student.n_qubits", "less than or equal to 20"]),
    ({"device": {"name": "ibm.qpu"}}, ["device.name", "default.qubit"]),
    ({"device": {"shots": 0}}, ["device.shots", "greater than 0"]),
    ({"evaluate": {"shots": -5}}, ["evaluate.shots", "greater than 0"]),
    ({"train": {"alpha": 1.5}}, ["train.alpha", "less than or equal to 1"]),
    ({"train": {"alpha": -0.1}}, ["train.alpha", "greater than or equal to 0"]),
    ({"train": {"temperature": 0}}, ["train.temperature", "greater than 0"]),
], ids=["wrong-type", "unknown-key", "n_qubits-0", "n_qubits-too-large", "unknown-device", "device-shots-0",
        "evaluate-shots-negative", "alpha-above-1", "alpha-below-0", "temperature-0"])
def test_bad_params_are_refused_before_any_work(tmp_path, sections, needles):
    (tmp_path / "corpus.txt").write_text(shakespeare_text(3000))
    assert_refused(prepare_in(tmp_path, "corpus.txt", **sections), "params.yaml", *needles)


def test_params_not_yaml_is_refused(tmp_path):
    (tmp_path / "params.yaml").write_text("student: [n_qubits: 4\n")
    assert_refused(qelm(["prepare"], tmp_path), "params.yaml", "not valid YAML")
    assert not (tmp_path / "data").exists()


def test_too_many_qubits_for_the_backend_is_refused_by_train(repo_copy):
    before = snapshot(repo_copy)
    set_params(repo_copy, student={"engine": "pennylane"},
               device={"name": "qiskit.remote", "backend": "FakeArmonkV2", "shots": 100})
    assert_refused(qelm(["train"], repo_copy), "FakeArmonkV2", "1 qubits", "student.n_qubits")
    assert snapshot(repo_copy) == before


# ---------------------------------------------------------------- teacher


def _not_a_model(d: Path) -> str:
    (d / "my-model").mkdir()
    (d / "my-model" / "weights.bin").write_bytes(b"\x00" * 1024)
    return str(d / "my-model")


def _broken_gguf(d: Path) -> str:
    (d / "broken.gguf").write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    return str(d / "broken.gguf")


@pytest.mark.parametrize("make, needles", [(_not_a_model, ["is not a model", "smollm2"]),
                                           (_broken_gguf, ["broken.gguf", "cannot load"])],
                         ids=["not-a-model", "broken-gguf"])
def test_bad_teacher_model_is_refused(repo_copy, tmp_path, make, needles):
    before = snapshot(repo_copy)
    set_params(repo_copy, teacher={"model": make(tmp_path)})
    assert_refused(qelm(["teacher"], repo_copy), "teacher.model", *needles)
    assert snapshot(repo_copy) == before
    assert_refused(qelm(["prepare"], repo_copy), "teacher.model", *needles)  # prepare reads its tokenizer
    assert snapshot(repo_copy) == before


# ---------------------------------------------------------------- saved models


class _Payload:
    """Unpickling this would create the marker file: proof that nothing was executed."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _truncate(folder: Path, _tmp: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _mismatched_config(folder: Path, _tmp: Path) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg["layers"] += 1  # the weights hold fewer layers than the config now claims
    (folder / "config.json").write_text(json.dumps(cfg))


def _pickle_payload(folder: Path, tmp: Path) -> None:
    (folder / "model.safetensors").write_bytes(pickle.dumps({"weights": _Payload(tmp / "EXECUTED")}))


@pytest.mark.parametrize("corrupt, needles", [
    (_truncate, ["model.safetensors", "truncated", "qelm train"]),
    (_mismatched_config, ["model.safetensors", "do not match config.json", "qelm train"]),
    (_pickle_payload, ["model.safetensors", "corrupt", "qelm train"]),
], ids=["truncated", "config-mismatch", "pickle-renamed"])
def test_bad_student_files_are_refused(repo_copy, tmp_path, corrupt, needles):
    corrupt(repo_copy / "models" / "student", tmp_path)
    before = snapshot(repo_copy)
    assert_refused(qelm(["evaluate"], repo_copy), *needles)
    assert snapshot(repo_copy) == before
    assert_refused(qelm(["predict", "--text", "Fair is foul"], repo_copy), *needles)
    assert not (tmp_path / "EXECUTED").exists(), "a pickle payload was executed"


# ---------------------------------------------------------------- IBM Quantum

IBM = {"student": {"engine": "pennylane"},
       "device": {"name": "qiskit.remote", "backend": "ibm_brisbane", "shots": 100}}


def test_real_ibm_backend_without_a_token_is_refused(repo_copy):
    before = snapshot(repo_copy)
    set_params(repo_copy, **IBM)
    assert_refused(qelm(["train"], repo_copy, env={"QISKIT_IBM_TOKEN": ""}), "ibm_brisbane", "QISKIT_IBM_TOKEN")
    assert snapshot(repo_copy) == before


NETWORK_STUB = '''
# Test stub: only the HTTP transport is replaced (every request answers 401, as IBM Cloud IAM does
# for an invalid API key); qiskit-ibm-runtime's own code runs unchanged.
import requests
from requests.adapters import HTTPAdapter


def _send(self, request, **kwargs):
    response = requests.Response()
    response.status_code, response.url, response.request = 401, request.url, request
    response.headers["Content-Type"] = "application/json"
    response._content = b'{"errorCode": "BXNIM0415E", "errorMessage": "Provided API key could not be found."}'
    return response


HTTPAdapter.send = _send
'''


def test_invalid_ibm_token_is_refused_without_echoing_it(repo_copy, tmp_path):
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "sitecustomize.py").write_text(NETWORK_STUB)
    before = snapshot(repo_copy)
    set_params(repo_copy, **IBM)
    token = "qelm-test-invalid-token-7c1e9d"
    line = assert_refused(qelm(["train"], repo_copy, env={"QISKIT_IBM_TOKEN": token, "PYTHONPATH": str(stub)}),
                          "ibm_brisbane", "valid API token", "QISKIT_IBM_TOKEN")
    assert token not in line
    assert snapshot(repo_copy) == before
