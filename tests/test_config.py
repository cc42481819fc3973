import subprocess
import sys

import pytest

from qelm_core.config import ConfigError, load_params, load_params_dotted, parse_params
from tests.conftest import REPO, write_params


def test_repo_params_are_valid():
    params = load_params(REPO / "params.yaml")
    assert params.vocab_size == 2 ** params.student.n_qubits


@pytest.mark.parametrize("raw, key", [
    ({"student": {"n_qubits": 0}}, "student.n_qubits"),
    ({"student": {"n_qubits": "eight"}}, "student.n_qubits"),
    ({"student": {"qubits": 8}}, "student.qubits"),
    ({"bogus": 1}, "bogus"),
    ({"train": {"alpha": 1.5}}, "train.alpha"),
    ({"train": {"temperature": 0}}, "train.temperature"),
    ({"device": {"shots": 0}}, "device.shots"),
    ({"teacher": {"window": 64, "stride": 65}}, "teacher"),
    ({"data": {"split_train": 0.8, "split_val": 0.3}}, "data"),
    ({"student": {"entangler": "cphase", "n_qubits": 2}}, "student"),
    ({"student": {"entangler": "cphase", "encoding": "bits"}}, "student"),
    ({"student": {"n_qubits": 3, "embedded_tokens": 9}}, "student"),
    ({"student": {"entangler": "cz", "encoding": "bits", "embedded_tokens": 4}}, "student"),
])
def test_bad_params_are_one_line_naming_the_key(raw, key):
    with pytest.raises(ConfigError) as info:
        parse_params(raw, "params.yaml")
    message = str(info.value)
    assert "\n" not in message and f"params.yaml: {key}" in message


def test_unknown_key_says_so():
    with pytest.raises(ConfigError, match="unknown key"):
        parse_params({"student": {"qubits": 8}})


def test_overrides_merge_and_validate(tmp_path):
    path = write_params(tmp_path, {"student": {"n_qubits": 4, "layers": 2}})
    params = load_params(path, {"student": {"layers": 5}})
    assert (params.student.n_qubits, params.student.layers) == (4, 5)
    with pytest.raises(ConfigError, match="student.layers"):
        load_params(path, {"student": {"layers": 0}})


def test_dotted_overrides_are_named_as_overrides(tmp_path):
    """What the Prefect form and `dvc exp run -S` give: dotted keys; a rejected value is called an override,
    a broken params.yaml is reported as the file's fault, a key below a value says so."""
    path = write_params(tmp_path, {"student": {"n_qubits": 4, "layers": 2}})
    params = load_params_dotted(path, {"student.layers": 5, "train.alpha": 0.0})
    assert (params.student.n_qubits, params.student.layers, params.train.alpha) == (4, 5, 0.0)
    with pytest.raises(ConfigError, match=r"^override rejected: .*student.layers"):
        load_params_dotted(path, {"student.layers": 0})
    with pytest.raises(ConfigError, match="override student.layers.x: layers is a value, not a section"):
        load_params_dotted(path, {"student.layers": 5, "student.layers.x": 1})
    path.write_text("student: [")
    with pytest.raises(ConfigError, match="not valid YAML") as err:
        load_params_dotted(path, {"student.layers": 5})
    assert not str(err.value).startswith("override")


def test_cli_exits_nonzero_with_one_line(tmp_path):
    write_params(tmp_path, {"student": {"n_qubits": 0}})
    proc = subprocess.run([sys.executable, "-m", "qelm_core.cli", "prepare", "--params", "params.yaml"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert lines == ["error: params.yaml: student.n_qubits: Input should be greater than or equal to 1"]
    assert not (tmp_path / "data").exists()
